"""syncsvc: connect a patient's EHR once (SMART standalone launch), keep their record in sync."""

__version__ = "0.1.0"
