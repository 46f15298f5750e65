"""The running service and host-app client of the web tests, for the patient pages."""

from tests.integration.web.conftest import *  # noqa: F403 - the service's fixtures, found by name
