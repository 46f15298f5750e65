"""The running syncsvc service for browser tests (the same fixtures as the web tests)."""

from tests.integration.web.conftest import (  # noqa: F401 - fixtures are found by name
    api,
    pkjwt_private_key,
    sandbox_config,
    service,
    service_origin,
    service_socket,
    settings,
)
