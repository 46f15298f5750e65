"""``syncsvc demo --once``: the README's first command, headless, on a fresh data folder."""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.cli.runner import syncsvc


async def test_demo_once_connects_syncs_and_prints_one_json_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCSVC_")}
    data = tmp_path / "demo"
    result = await syncsvc(None, "demo", "--once", "--data-dir", str(data), env=env)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    summary = result.json()
    assert isinstance(summary, dict)
    assert summary["ok"] is True
    assert summary["connections_made"] == 1
    [connection] = summary["connections"]
    assert connection["status"] == "active"
    assert "patient/Observation.rs" in connection["granted_scopes"]
    assert connection["trimmed_scopes"] == []
    assert summary["resources_stored"] == sum(connection["resources"].values())
    assert summary["resources_stored"] > 100
    assert summary["sync"]["sync"] == {"ok": 1}
    assert "generated a vault key" in result.stderr
    key_file = data / "vault-keys.json"
    assert key_file.stat().st_mode & 0o077 == 0  # readable by the owner only
    assert f"first sync done: {summary['resources_stored']} resources stored" in result.stderr
    # A second run reuses the key, starts from a fresh database (the last sandbox's grants are
    # gone with it) and connects the patient again, without a warning about the last run.
    again = await syncsvc(None, "demo", "--once", "--data-dir", str(data), env=env)
    assert again.code == 0, again.stderr
    assert "generated a vault key" not in again.stderr
    assert "starting from a fresh demo database" in again.stderr
    for noise in ("warning", "needs_reauth", "could not be reached", "traceback"):
        assert noise not in again.stderr.lower()
    second = again.json()
    assert isinstance(second, dict)
    assert second["connections_made"] == 1
    assert second["resources_stored"] == summary["resources_stored"]
    assert f"first sync done: {second['resources_stored']} resources stored" in again.stderr
