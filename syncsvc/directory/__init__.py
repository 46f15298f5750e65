"""The EHRs syncsvc connects to: registering tenants, importing published endpoint directories
and diagnosing a tenant's registration from what its grants and launches show."""
