"""One style across the tree: ruff's lint and format checks ([tool.ruff] in pyproject.toml)
run as part of the test command, so CI fails on a lint error or an unformatted file."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    return subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_ruff_lint_passes():
    r = _ruff("check", ".")
    if r.returncode != 0 and "No module named ruff" in r.stderr:
        pytest.fail("ruff is not installed: pip install -e '.[test]' installs it")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_applied():
    r = _ruff("format", "--check", ".")
    assert r.returncode == 0, "run `ruff format .`:\n" + r.stdout + r.stderr
