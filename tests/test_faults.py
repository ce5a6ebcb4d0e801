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


@pytest.mark.parametrize(
    "err, condition",
    [
        (errno.EROFS, "the file system is read-only (EROFS)"),
        (errno.EACCES, "permission denied (EACCES)"),
        (errno.EDQUOT, "the disk quota is exceeded (EDQUOT)"),
        (errno.EIO, "an I/O error of the device (EIO)"),
    ],
)
def test_each_write_condition_is_named_and_the_old_file_kept(tmp_path, monkeypatch, err, condition):
    """The rename (EROFS, EACCES: a file system remounted read-only, a chmod by someone else)
    or the fsync (EDQUOT, EIO) fails: exit-3 error naming it; the previous file is intact."""
    from runner.errors import RunFileError
    from runner.output import RunDir

    run = RunDir(tmp_path / "run")
    p = run.write_json("summary.json", {"stage": "train", "val_acc": 0.5})

    def fail(*a, **kw):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "replace" if err in (errno.EROFS, errno.EACCES) else "fsync", fail)
    with pytest.raises(RunFileError) as e:
        run.write_json("summary.json", {"stage": "train", "val_acc": 0.9})
    assert str(e.value).startswith(f"could not write {p}: {condition}")
    assert e.value.exit_code == 3 and "No checkpoint of this run was saved" in str(e.value)
    monkeypatch.undo()
    assert '"val_acc": 0.5' in p.read_text() and _temps(run.path) == []


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


def _copy(run_dir: Path, to: Path, finished: bool = True) -> Path:
    """A copy of a run directory (its lock file left behind); `finished=False`: as if it was
    interrupted (no summary.json)."""
    import shutil

    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns(".runner.lock"))
    if not finished:
        (to / "summary.json").unlink()
    return to


# ----------------------------------------------------------------------------- reading back
@pytest.mark.parametrize(
    "file, content, start, message",
    [
        ("summary.json", "", "from", "summary.json is empty: not a run summary"),
        ("summary.json", "", "resume", "summary.json is empty: not a run summary"),
        ("summary.json", '{"val_acc": 0.9}', "from", "not a complete run summary: no stage"),
        ("summary.json", '{"stage": "train", "epochs": "2"}', "resume", "epochs='2' is not int"),
        ("summary.json", '{"stage": "tr', "from", "summary.json is not valid JSON"),
        ("config.yaml", "- a\n- b\n", "from", "config.yaml holds a list, not a config"),
        (".hydra/overrides.yaml", "{a: 1}", "resume-interrupted", "expected a list of overrides"),
    ],
)
def test_a_malformed_run_file_is_exit_2_naming_it_never_a_finished_run(
    finished, tmp_path, file, content, start, message
):
    d = _copy(finished, tmp_path / "src", finished=start != "resume-interrupted")
    (d / file).write_text(content)
    args = FAST + ["stage=train", f"from={d}"] if start == "from" else FAST + [f"resume={d}"]
    r = run_cli(args, tmp_path)
    assert r.code == 2, r.out
    assert message in r.out and str(d) in r.out, r.out
    assert "Traceback" not in r.out
    assert not list(tmp_path.glob("outputs/*/*/summary.json"))  # nothing ran


def test_a_checkpoint_whose_loop_state_has_the_wrong_type_is_refused_naming_it(finished, tmp_path):
    d = _copy(finished, tmp_path / "src", finished=False)
    last = d / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=True)
    ck["loop"] = "epoch 3"
    torch.save(ck, last)
    r = run_cli([f"resume={d}"], tmp_path)
    assert r.code == 2, r.out
    assert f"checkpoint {last} is malformed: loop state is str, not a dict" in r.out
    assert "AttributeError" not in r.out and "Traceback" not in r.out

    ck["loop"] = {"epoch": "1", "step": 8, "history": []}
    torch.save(ck, last)
    r = run_cli([f"resume={d}"], tmp_path)
    assert r.code == 2 and "loop.epoch='1' is not int" in r.out, r.out


def test_checks_metrics_and_lineage_read_back_are_validated(finished, tmp_path):
    import runner
    from runner.errors import ConfigError
    from runner.jobs import RunRecord

    d = _copy(finished, tmp_path / "src")
    rec = RunRecord.read(d)
    assert rec.status == "finished" and rec.checks and rec.exit_code == 0
    good = (d / "checks.json").read_text()
    (d / "checks.json").write_text('[{"name": "train.finite", "status": "PASSED"}]')
    with pytest.raises(ConfigError, match=r"checks\.json: train\.finite: status 'PASSED'"):
        RunRecord.read(d)
    (d / "checks.json").write_text(good)
    (d / "lineage.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"lineage\.json holds list, not a JSON object"):
        RunRecord.read(d)
    (d / "lineage.json").unlink()
    metrics = (d / "metrics.csv").read_text().splitlines()
    cells = metrics[1].split(",")
    cells[4] = "oops"  # val_loss
    (d / "metrics.csv").write_text("\n".join([metrics[0], ",".join(cells)]) + "\n")
    with pytest.raises(ConfigError, match=r"metrics\.csv: line 2, column val_loss: 'oops'"):
        _ = runner.load(d).metrics


# ----------------------------------------------------------------------------- code
MARKER = """
from pathlib import Path
from runner.models import TinyCNN

def make(**kw):
    Path(__file__).with_name("ran.txt").write_text("ran")  # the code path ran
    return TinyCNN(**kw)
"""


def test_code_named_only_by_a_run_directory_is_refused_unless_trusted(finished, tmp_path):
    (tmp_path / "marker.py").write_text(MARKER)
    ran = tmp_path / "ran.txt"

    def naming_marker(p: Path) -> None:
        p.write_text(p.read_text().replace("runner.models.TinyCNN", "marker.make"))

    # a from= source's config.yaml
    src = _copy(finished, tmp_path / "src")
    (src / ".hydra" / "config.yaml").rename(src / "config.yaml")
    naming_marker(src / "config.yaml")
    r = run_cli(FAST + ["stage=train", f"from={src}"], tmp_path)
    assert r.code == 2, r.out
    assert f"from={src}: {src / 'config.yaml'} names code: model._target_=marker.make" in r.out
    assert "trust_run_configs=true" in r.out and not ran.exists()

    # the overrides resume= reapplies
    stopped = _copy(finished, tmp_path / "stopped", finished=False)
    with (stopped / ".hydra" / "overrides.yaml").open("a") as f:
        f.write("- model._target_=marker.make\n")
    r = run_cli([f"resume={stopped}"], tmp_path)
    assert r.code == 2, r.out
    assert "records model._target_=marker.make" in r.out and "trust_run_configs=true" in r.out
    assert not ran.exists()

    # the config stored in a checkpoint
    import runner
    from runner.errors import ConfigError

    best = src / "checkpoints" / "best.pt"
    ck = torch.load(best, weights_only=True)
    ck["config"] = ck["config"].replace("runner.models.TinyCNN", "marker.make")
    torch.save(ck, best)
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConfigError, match="names code: model._target_=marker.make"):
            runner.load(src).model()
        assert not ran.exists()
        runner.load(src).model(trust_run_configs=True)
        assert ran.read_text() == "ran"  # the check was on the path that runs it
        ran.unlink()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("marker", None)

    # trusted explicitly: the source's code runs
    r = run_cli(FAST + ["stage=train", f"from={src}", "trust_run_configs=true"], tmp_path)
    assert r.code == 0, r.out
    assert ran.read_text() == "ran"


def test_the_blocklist_refuses_the_resolved_callable_not_its_spelling(tmp_path, monkeypatch):
    from runner.errors import ConfigError
    from runner.targets import resolve_target

    (tmp_path / "reexport.py").write_text(
        "import os, subprocess\nfrom os import system\nrun = system\nopen_ = subprocess.Popen\n"
        "clear = os.environ.clear\nev = eval\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, what in [
        ("reexport.system", "posix.system"),
        ("reexport.run", "posix.system"),
        ("reexport.open_", "subprocess.Popen"),
        ("reexport.clear", "clear"),
        ("reexport.ev", "builtins.eval"),
    ]:
        with pytest.raises(ConfigError, match="is refused: it is .*" + what):
            resolve_target(name, "model._target_")
    assert resolve_target("runner.models.TinyCNN", "model._target_").__name__ == "TinyCNN"
    import sys

    sys.modules.pop("reexport", None)


def test_resume_of_a_finished_run_reapplies_the_overrides_it_recorded(finished, tmp_path):
    """`resume=<finished run> trainer.epochs=2` trains on in a new directory with the run's
    own data, model and batch size (without them: digits' 10 classes, the checkpoint unfit)."""
    r = run_cli([f"resume={finished}", "trainer.epochs=2"], tmp_path)
    assert r.code == 0, r.out
    s = r.json("summary.json")
    assert s["epochs"] == 2 and s["data"]["kind"] == "synthetic"
    assert s["resumed_from"] == str(finished / "checkpoints" / "last.pt")


# ----------------------------------------------------------------------------- hostile input
def _bomb_png(path: Path, side: int = 20000) -> None:
    """A PNG whose header says side x side pixels (1.2 GB as RGB) in a few hundred bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1) * 4)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.fixture
def hostile_folder(tmp_path) -> Path:
    """Classes named with mathtext and HTML, one decompression bomb, one image over the
    pixel limit the tests set (data.max_image_pixels=100: 8x8 is under, 16x16 over)."""
    from PIL import Image

    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for c, cls in enumerate((r"$\foo$", "<i>x $a$b")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (30 + 180 * c + 5 * i,) * 3).save(d / f"{i}.png")
    _bomb_png(root / "train" / r"$\foo$" / "bomb.png")
    Image.new("RGB", (16, 16)).save(root / "train" / "<i>x $a$b" / "big.png")
    return root


def test_hostile_class_names_and_images_train_to_a_report(hostile_folder, tmp_path):
    args = FAST + [
        "stage=train",
        "data=imagefolder",
        f"data.root={hostile_folder}",
        "data.image_size=8",
        "data.max_image_pixels=100",
    ]
    r = run_cli(args, tmp_path)
    assert r.code == 0, r.out
    s = r.json("summary.json")
    assert s["data"]["class_names"] == [r"$\foo$", "<i>x $a$b"]
    bad = s["unreadable_files"]
    bomb = str(hostile_folder / "train" / r"$\foo$" / "bomb.png")
    big = str(hostile_folder / "train" / "<i>x $a$b" / "big.png")
    assert sorted(bad) == sorted([bomb, big])
    assert "decompression bomb" in bad[bomb] and "400000000 pixels" in bad[bomb]
    assert "16x16 = 256 pixels, over data.max_image_pixels=100" in bad[big]
    page = (r.run_dir / "report.html").read_text()
    assert "&lt;i&gt;x" in page and "<i>x $a$b" not in page

    r = run_cli(args + ["data.on_unreadable=fail"], tmp_path / "strict")
    assert r.code == 2, r.out
    assert "bomb.png" in r.out and "Traceback" not in r.out


def test_inspect_names_the_bomb_and_plots_mathtext_class_names(hostile_folder, tmp_path):
    """Both files are refused from their headers (nothing decoded: memory stays bounded);
    data.corrupt fails (exit 1) naming them, and every figure is drawn."""
    r = run_cli(
        FAST
        + [
            "stage=inspect",
            "data=imagefolder",
            f"data.root={hostile_folder}",
            "data.image_size=8",
            "data.max_image_pixels=100",
        ],
        tmp_path,
    )
    assert r.code == 1, r.out
    checks = {c["name"]: c for c in r.json("checks.json")}
    assert checks["data.corrupt"]["status"] == "fail" and checks["data.corrupt"]["value"] == 2
    errors = {f["name"]: f["error"] for f in checks["data.corrupt"]["details"]["files"]}
    assert errors == {
        "train/$\\foo$/bomb.png": errors.get("train/$\\foo$/bomb.png"),
        "train/<i>x $a$b/big.png": "ImageTooLarge: 16x16 = 256 pixels, over data.max_image_pixels=100",
    }
    assert "decompression bomb" in errors["train/$\\foo$/bomb.png"]
    assert len(list((r.run_dir / "plots").glob("*.png"))) >= 3
    assert "Traceback" not in r.out


# ----------------------------------------------------------------------------- outside a run
@pytest.mark.parametrize(
    "fmt, file",
    [
        ("onnx", "model.onnx"),
        ("torchscript", "model.torchscript.pt"),
        ("safetensors", "model.safetensors"),
    ],
)
def test_an_export_over_the_file_size_limit_is_exit_3_naming_the_file(
    finished, tmp_path, fmt, file
):
    """`ulimit -f` below the model's size: each exporter's file (torch's own writer would abort
    the process, safetensors' Rust writer says "os error 27") ends in one exit-3 message
    naming the file and EFBIG, and no part of an export is left."""
    pytest.importorskip("onnx")
    out = tmp_path / "export"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # the models are ~90 KB
    try:
        r = run_cli(["export", str(finished), "--format", fmt, "--out", str(out)], tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert r.code == 3, r.out
    assert f"could not write {out / file}: the file is larger than allowed (EFBIG" in r.out
    assert "Nothing was exported" in r.out and "Traceback" not in r.out
    assert not out.exists() and not list(tmp_path.glob(".export.*"))


def test_predictions_that_cannot_be_written_are_exit_3_and_keep_the_old_file(
    finished, tmp_path, monkeypatch
):
    out = tmp_path / "predictions.csv"
    out.write_text("old\n")

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    r = run_cli(["predict", str(finished), "--split", "val", "--out", str(out)], tmp_path)
    assert r.code == 3, r.out
    assert f"could not write {out}: no space left on the device (ENOSPC)" in r.out
    assert out.read_text() == "old\n"


def test_a_study_storage_that_cannot_be_written_is_exit_3_naming_it(tmp_path, monkeypatch):
    """SQLite's "database or disk is full" while the sweeper records a trial: one message
    naming the study's file and the condition, exit 3 (not a stack of SQLAlchemy frames)."""
    import sqlite3

    import optuna
    import sqlalchemy.exc

    def full(*a, **kw):
        raise sqlalchemy.exc.OperationalError(
            "INSERT INTO trials", {}, sqlite3.OperationalError("database or disk is full")
        )

    monkeypatch.setattr(optuna.storages.RDBStorage, "_create_new_trial", full)
    args = ["-m", "stage=tune", *FAST, "hydra.sweeper.study_name=s", "hydra.sweeper.n_trials=1"]
    r = run_cli(args, tmp_path)
    db = tmp_path / "multirun" / "tune" / "s" / "optuna.db"
    assert r.code == 3, r.out
    assert f"could not write {db}: no space left on the device (ENOSPC)" in r.out, r.out
    assert "the same command resumes the study" in r.out and "Traceback" not in r.out
