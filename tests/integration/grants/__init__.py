"""Every grant shape end to end: pages, CLI, API, tenant health and metrics say the same."""
