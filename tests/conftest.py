"""Shared test helpers: run the real CLI in a temp folder, find the run dir, validate it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_CHECK_RUNDIR = REPO.parent / "shared" / "tools" / "check_rundir.py"
# the contract's validator, vendored (tests/tools/): the tests check every run directory they
# make on any checkout; test_contract_validator_is_the_shared_one keeps the copy current
CHECK_RUNDIR = REPO / "tests" / "tools" / "check_rundir.py"

# tiny and fast: every CLI test starts from these and adds its own overrides
# one torch thread: on 2 shared cores two threads per process spin against each other
FAST = [
    "data=synthetic",
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "trainer.progress=false",
    "data.num_workers=0",
    "trainer.threads=1",
    # stage=overfit's lr range test: 100 extra steps (~10 s of resnet10t on one thread) in
    # every overfit run; tests/test_lr_range.py turns it on
    "checks.train_lr_range.enabled=false",
]


@dataclass
class CliResult:
    code: int
    out: str
    cwd: Path

    @property
    def run_dirs(self) -> List[Path]:
        return sorted(p.parent for p in self.cwd.glob("outputs/*/*/.hydra"))

    @property
    def run_dir(self) -> Path:
        dirs = self.run_dirs
        assert dirs, f"no run directory under {self.cwd}/outputs\n{self.out}"
        return dirs[-1]

    def json(self, name: str, run_dir: Optional[Path] = None):
        return json.loads(((run_dir or self.run_dir) / name).read_text())


def run_cli(
    args: List[str],
    cwd: Path,
    env: Optional[dict] = None,
    timeout: int = 300,
    process: bool = False,
) -> CliResult:
    """`python -m runner ARGS` in `cwd`, as a user would run it: in this process (runner/jobs.py
    run_argv: Hydra's and logging's state isolated, what it prints captured), or as a child
    process when `process` is set or `env` is given (a variable the run reads at start-up).
    Modules the run imported from `cwd` (a test's own `_target_` files) are forgotten after
    it, so the next test's file of the same name is imported afresh."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    if process or env:
        return _run_child(args, cwd, env, timeout)
    import importlib
    import traceback

    from runner.jobs import run_argv

    importlib.invalidate_caches()
    before = set(sys.modules)
    saved_env = os.environ.pop("HYDRA_FULL_ERROR", None)
    try:
        out = run_argv(args, how="in-process", cwd=str(cwd), capture=True)
        code, text = out.code, out.output
    except BaseException as e:  # noqa: BLE001 -- what a child process would print and exit with
        if isinstance(e, KeyboardInterrupt):
            raise
        code, text = 1, "".join(traceback.format_exception(type(e), e, e.__traceback__))
    finally:
        if saved_env is not None:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
        root = str(Path(cwd).resolve())
        for name in set(sys.modules) - before:
            f = getattr(sys.modules.get(name), "__file__", None) or ""
            if f and str(Path(f).resolve()).startswith(root):
                del sys.modules[name]
    return CliResult(code, text, Path(cwd))


def _run_child(args: List[str], cwd: Path, env: Optional[dict], timeout: int) -> CliResult:
    e = dict(os.environ)
    e.pop("HYDRA_FULL_ERROR", None)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), str(cwd), e.get("PYTHONPATH", "")])
    e.update(env or {})
    p = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(p.returncode, p.stdout + p.stderr, Path(cwd))


def start_cli(args: List[str], cwd: Path, **popen_kw) -> subprocess.Popen:
    """`python -m runner ARGS` in the background (to kill or signal it mid-run)."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    popen_kw.setdefault("stdout", subprocess.DEVNULL)
    popen_kw.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd, env=env, **popen_kw)


def metric_rows(run_dir: Path) -> List[dict]:
    """metrics.csv without its timing columns: what must match between equivalent runs."""
    import csv

    keep = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    return [{k: r[k] for k in keep} for r in csv.DictReader((run_dir / "metrics.csv").open())]


def assert_contract(*run_dirs: Path) -> None:
    """DESIGN.md's run-directory contract, checked by the shared validator."""
    p = subprocess.run(
        [sys.executable, str(CHECK_RUNDIR), *map(str, run_dirs)], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture
def cli(tmp_path):
    """cli([...overrides]) -> CliResult, run in this test's temp folder."""

    def _run(args, **kw):  # process=True: a child `python -m runner`
        return run_cli(args, tmp_path, **kw)

    return _run


def compose(overrides: List[str] = (), config_dir: Optional[str] = None):
    """The composed config, as the CLI would build it (no run)."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from runner.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=config_dir or str(REPO / "conf")):
        return _compose(config_name="config", overrides=list(overrides), return_hydra_config=False)


@pytest.fixture(autouse=True)
def _close_figures():
    """Checks hand back matplotlib figures; a test that keeps them (no run dir saving them)
    would leave them open for the rest of its worker."""
    yield
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")
