"""Shared fixtures: the sandbox EHR and the databases (SQLite and PostgreSQL)."""

pytest_plugins = [
    "tests.fixtures.sandbox",
    "tests.fixtures.browser",
    "tests.fixtures.database",
    "tests.fixtures.logs",
    "tests.fixtures.service",
]
