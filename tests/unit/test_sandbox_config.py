"""Loading the sandbox configuration from a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from syncsvc.sandbox.config import FaultSpec, PatientSpec, load_config, vendor_policy


def _write(tmp_path: Path, raw: Any) -> Path:
    path = tmp_path / "sandbox.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_file_overrides_apply_on_top_of_the_vendor_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "tenants": [
                {
                    "id": "t1",
                    "name": "T1",
                    "vendor": "epic",
                    "policy": {"pkce": "required"},
                    "faults": [{"kind": "status_503", "count": 2}],
                    "patients": [{"id": "p", "given": "A", "family": "B"}],
                }
            ],
            "clients": [{"client_id": "c", "redirect_uris": ["http://127.0.0.1:9/cb"]}],
        },
    )

    config = load_config(path)

    tenant = config.tenants[0]
    epic = vendor_policy("epic")
    assert tenant.policy.pkce == "required"
    assert tenant.policy.required_categories == epic.required_categories
    assert tenant.policy.hide_offline_access_in_scope is True
    assert tenant.faults == [FaultSpec(kind="status_503", count=2)]
    assert tenant.patients == [PatientSpec(id="p", given="A", family="B")]
    assert config.client("c") is not None


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ([], "JSON object"),
        ({"clients": []}, "tenants"),
        ({"tenants": ["t"], "clients": []}, "JSON object"),
        ({"tenants": [{"id": "t", "name": "T", "vendor": "x"}], "clients": []}, "vendor"),
        ({"tenants": [{"id": "t", "name": "T", "policy": []}], "clients": []}, "policy"),
        ({"tenants": [{"id": "t", "name": "T", "policy": {"pkce2": 1}}], "clients": []}, "pkce2"),
        ({"tenants": [{"id": "t", "name": "T"}, {"id": "t", "name": "U"}], "clients": []}, "uniq"),
    ],
)
def test_invalid_files_are_refused_with_a_reason(tmp_path: Path, raw: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        load_config(_write(tmp_path, raw))
