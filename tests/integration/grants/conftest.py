"""The running service, the sandbox and an operator's client, for the grant-state tests."""

from tests.integration.operators.conftest import operator  # noqa: F401 - a fixture, by name
from tests.integration.web.conftest import *  # noqa: F403 - the service's fixtures, found by name
