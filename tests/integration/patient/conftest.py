"""The running service and host-app client of the web tests, for the patient pages."""

from tests.integration.web.conftest import (  # noqa: F401 - fixtures, used by name
    api,
    pkjwt_private_key,
    sandbox_config,
    service,
    service_origin,
    service_socket,
    settings,
)
