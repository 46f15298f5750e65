"""Multi-process tests run on PostgreSQL only: SQLite is one process by design."""

from __future__ import annotations

import pytest


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def db_backend(request: pytest.FixtureRequest) -> str:
    """Only ``postgres`` here (it overrides the two-backend fixture)."""
    backend: str = request.param
    return backend
