"""Storage: models, engines, migrations and the query functions (``repo``)."""
