"""The running syncsvc service for browser tests (the same fixtures as the web tests)."""

from tests.integration.web.conftest import *  # noqa: F403 - the service's fixtures, found by name
