"""The hash-locked requirement files match pyproject.toml: a changed dependency without a re-lock
fails here (and so in CI), with the command that fixes it."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock", ROOT / "requirements" / "lock.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_module()


def _pins(path: Path) -> dict[str, tuple[Version, int]]:
    """Package → (pinned version, number of hashes) of a lock file, for this Python."""
    pins: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    environment = default_environment() | {"python_version": LOCK.PYTHON_VERSION}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            name, version, marker = match.groups()
            current = None
            if marker and not Requirement(f"x; {marker}").marker.evaluate(environment):
                continue
            current = canonicalize_name(name)
            pins[current] = (Version(version), 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


@pytest.mark.parametrize("name", sorted(LOCK.LOCKS))
def test_each_lock_file_was_made_from_the_current_pyproject(name: str) -> None:
    path = ROOT / "requirements" / f"{name}.txt"
    assert LOCK.recorded_digest(path) == LOCK.digest(LOCK.LOCKS[name]), (
        f"requirements/{name}.txt is stale: pyproject.toml's dependencies changed since it was "
        "made. Run `make lock` and commit the result."
    )


@pytest.mark.parametrize("name", sorted(LOCK.LOCKS))
def test_each_lock_file_pins_every_requirement_with_hashes(name: str) -> None:
    pins = _pins(ROOT / "requirements" / f"{name}.txt")
    document = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = list(document["project"]["dependencies"]) + list(document["build-system"]["requires"])
    for extra in LOCK.LOCKS[name]:
        wanted += document["project"]["optional-dependencies"][extra]
    for line in wanted:
        requirement = Requirement(line)
        key = canonicalize_name(requirement.name)
        assert key in pins, f"{requirement.name} is not in requirements/{name}.txt: run `make lock`"
        version, _ = pins[key]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{name}.txt pins {requirement.name} {version}, outside {line!r}"
        )
    assert all(hashes > 0 for _, hashes in pins.values())
