"""The revocation retries' own bound on requests at once, against their lease."""

from __future__ import annotations

import math

from syncsvc.lifecycle.revocations import DEFAULT_LIMIT, REVOCATIONS_AT_ONCE
from syncsvc.sync.revocation_attempt import ATTEMPT_TIMEOUT_SECONDS
from syncsvc.sync.revocation_queue import LEASE_SECONDS


def test_a_full_claim_of_revocations_ends_within_its_lease() -> None:
    rounds = math.ceil(DEFAULT_LIMIT / REVOCATIONS_AT_ONCE)
    assert rounds * ATTEMPT_TIMEOUT_SECONDS < LEASE_SECONDS
