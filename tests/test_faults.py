"""Faults and hostile input (issue 26): a full disk or a size limit while a run file is
written, corrupt run files read back, two processes on one run directory, code named only by a
run directory, hostile class names and images, file modes."""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_cli, start_cli

TRAIN = FAST + ["stage=train", "trainer.epochs=1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished train run (1 epoch), shared by the tests that only read it."""
    ws = tmp_path_factory.mktemp("finished")
    r = run_cli(TRAIN, ws)
    assert r.code == 0, r.out
    return r.run_dir


def _temps(run_dir: Path) -> list:
    return sorted(p.name for p in run_dir.rglob(".*.tmp"))


# ----------------------------------------------------------------------------- writing
def test_a_full_disk_in_a_checkpoint_write_names_file_condition_and_what_survived(
    tmp_path, monkeypatch
):
    """ENOSPC in epoch 3's last.pt: exit 3, one message; epoch 2's checkpoint is intact and
    the printed command resumes it (a stale temp file of a killed write is removed then)."""
    real_save = torch.save
    writes = []

    def full_disk_at_third_last(obj, f, *a, **kw):
        if obj.get("kind") != "weights":
            writes.append(obj["loop"]["epoch"])
            if len(writes) == 3:
                f.write(b"PK\x03\x04 partial")  # some bytes reach the temp file first
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk_at_third_last)
    args = FAST + ["stage=train", "trainer.epochs=3", "trainer.checkpoint_every=1"]
    r = run_cli(args, tmp_path)
    assert r.code == 3, r.out
    d = r.run_dir
    last = d / "checkpoints" / "last.pt"
    msg = f"could not write {last}: no space left on the device (ENOSPC)"
    assert msg in r.out, r.out
    assert f"last good checkpoint: {last} (epoch 2, step 16)" in r.out
    assert f"resume with: python -m runner resume={d}" in r.out
    assert "Traceback" not in r.out and not (d / "summary.json").exists()
    assert _temps(d) == []  # the failed write's temp file is gone
    assert torch.load(last, weights_only=True)["loop"]["epoch"] == 2  # nothing truncated
    error = r.json("error.json")
    assert error["exit_code"] == 3 and error["type"] == "RunFileError"

    monkeypatch.setattr(torch, "save", real_save)
    stale = d / "checkpoints" / ".last.pt.0123abcd.tmp"  # what a SIGKILL mid-write leaves
    stale.write_bytes(b"half a checkpoint")
    resumed = run_cli([f"resume={d}"], tmp_path)
    assert resumed.code == 0, resumed.out
    assert not stale.exists()
    assert r.json("summary.json", d)["epochs"] == 3


def test_a_file_size_limit_ends_with_efbig_named_not_torchs_enforce_fail(tmp_path):
    """`ulimit -f` below last.pt's size (the process's own RLIMIT_FSIZE, as ulimit sets it):
    torch's writer fails inside C++; the message names EFBIG and the file, nothing truncated."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))  # last.pt is ~300 KB
    try:
        r = run_cli(TRAIN, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert r.code == 3, r.out
    last = r.run_dir / "checkpoints" / "last.pt"
    assert f"could not write {last}: the file is larger than allowed (EFBIG" in r.out, r.out
    assert "No checkpoint of this run was saved" in r.out
    assert "inline_container" not in r.out and "Traceback" not in r.out
    assert not last.exists() and _temps(r.run_dir) == []


def test_a_vanished_run_directory_is_not_made_again(tmp_path):
    from runner.errors import RunFileError
    from runner.output import RunDir

    run = RunDir(tmp_path / "run")
    run.write_json("summary.json", {"stage": "train"})
    (tmp_path / "run" / "summary.json").unlink()
    (tmp_path / "run").rmdir()
    with pytest.raises(RunFileError, match="the run directory no longer exists") as e:
        run.write_json("checks.json", [])
    assert e.value.exit_code == 3 and e.value.errno == errno.ENOENT
    assert not (tmp_path / "run").exists()


def test_run_files_follow_the_umask(finished, tmp_path):
    """Written 0o666 less the umask, as open() would (mkstemp's 0600 hid them from the group)."""
    for name in ("summary.json", "metrics.csv", "report.html", "checkpoints/last.pt"):
        assert stat.S_IMODE((finished / name).stat().st_mode) == 0o666 & ~_umask(), name
    from runner.output import RunDir

    old = os.umask(0o027)
    try:
        p = RunDir(tmp_path).write_json("x.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# ----------------------------------------------------------------------------- one owner
def test_a_second_process_on_a_running_run_is_refused_until_the_first_is_killed(tmp_path):
    d = tmp_path / "run"
    args = FAST + [
        "stage=train",
        "trainer.epochs=3",
        "trainer.checkpoint_every=1",
        "data.num_train=4096",
        "trainer.batch_size=16",
    ]
    first = start_cli(args + [f"hydra.run.dir={d}"], tmp_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (d / "checkpoints" / "last.pt").exists():
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.02)
        hydra_record = (d / ".hydra" / "overrides.yaml").read_text()
        holder = f"in use by process {first.pid} on host {socket.gethostname()}"
        for second in ([f"resume={d}"], TRAIN + [f"hydra.run.dir={d}"]):
            r = run_cli(second, tmp_path)
            assert r.code == 2, r.out
            assert holder in r.out and "one process writes a run directory at a time" in r.out
        assert (d / ".hydra" / "overrides.yaml").read_text() == hydra_record
        assert not list(d.glob(".hydra.before-resume-*"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert not (d / "summary.json").exists()
    r = run_cli([f"resume={d}"], tmp_path)  # the kernel released the lock with the process
    assert r.code == 0, r.out
    assert r.json("summary.json", d)["epochs"] == 3


def test_the_lock_is_reentrant_in_one_process_and_refuses_another(tmp_path):
    from runner.errors import RunDirInUse
    from runner.output import lock_run_dir, owned, unlock_run_dir

    d = tmp_path / "run"
    code = (
        "import sys, time; from runner.output import lock_run_dir; lock_run_dir(sys.argv[1]); "
        "print('held', flush=True); time.sleep(60)"
    )
    with owned(d), owned(d / "rung-1"), owned(d):  # a parent, a nested run, the parent again
        other = subprocess.run(
            ["python", "-c", code.replace("time.sleep(60)", "pass"), str(d)],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])),
        )
        assert other.returncode == 1 and "RunDirInUse" in other.stderr
        assert f"in use by process {os.getpid()}" in other.stderr
    holder = subprocess.Popen(
        ["python", "-c", code, str(d)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirInUse, match=f"process {holder.pid} on host"):
            lock_run_dir(d)
    finally:
        holder.kill()
        holder.wait()
    lock_run_dir(d)  # free again
    unlock_run_dir(d)
