"""Background sync against the sandbox EHR and a real database."""
