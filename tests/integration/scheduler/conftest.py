"""The sandbox the scheduler tests run against."""

from __future__ import annotations

import pytest

from syncsvc.sandbox.config import SandboxConfig

from . import NANCY


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Nancy auto-approved, with small Condition and Observation lists (one page each)."""
    for tenant in sandbox_config.tenants:
        tenant.policy.auto_approve_patient = NANCY
        tenant.patients[0].sizes = {"Condition": 3, "Observation": 6}
    return sandbox_config
