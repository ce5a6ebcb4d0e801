"""Reliability (issue 7): bad input table, signals, DDP on 2 CPU processes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, metric_rows, run_cli, start_cli


def _tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with one finished run and the files the bad inputs point at."""
    ws = tmp_path_factory.mktemp("ws")
    r = run_cli(FAST + ["stage=train", "trainer.epochs=1"], ws)
    assert r.code == 0, r.out
    from PIL import Image

    for cls in ("a", "b"):
        (ws / "folder_empty_class" / "train" / cls).mkdir(parents=True)
        (ws / "folder_empty_class" / "val" / cls).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(ws / "folder_empty_class" / "train" / "a" / "x.png")
    Image.new("RGB", (8, 8)).save(ws / "folder_empty_class" / "val" / "a" / "x.png")
    (ws / "not_a_checkpoint.pt").write_text("hello")
    (ws / "afile.txt").write_text("x")
    (ws / "tvempty").mkdir()
    (ws / "badcode.py").write_text("def make():\n    return 42\n")
    for split in ("train", "val"):
        (ws / "folder_one_class" / split / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(ws / "folder_one_class" / split / "a" / "x.png")
    exp = ws / "conf" / "experiment"
    exp.mkdir(parents=True)
    (exp / "broken.yaml").write_text("# @package _global_\ntrainer:\n  epochs: [1, 2\n")
    (exp / "ignored.yaml").write_text("# @package _global_\nmodel:\n  name: resnet34\n")
    return ws, r.run_dir


# (overrides, text the one message must contain); {run} = a finished run dir, {ws} = workspace
BAD_INPUTS = [
    (["trainer.epoch=3"], "trainer.epoch"),
    (["trainer.epochs=abc"], "trainer.epochs"),
    (["seed=abc"], "seed"),
    (["trainer.epochs=0"], "trainer.epochs=0 must be > 0"),
    (["trainer.batch_size=-4"], "trainer.batch_size=-4 must be > 0"),
    (["optim.lr=-0.1"], "optim.lr=-0.1 must be > 0"),
    (["optim.lr=0"], "optim.lr=0.0 must be > 0"),
    (["optim.name=adamm"], "did you mean 'adam'"),
    (["sched.name=cosin"], "did you mean 'cosine'"),
    (["model=timm", "model.name=resnt18"], "did you mean 'resnet18'"),
    (["model=no_such_option"], "model/no_such_option"),
    (["stage=nope"], "stage"),
    (
        ["data=imagefolder", "data.root=/no/such/folder"],
        "data.root='/no/such/folder' is not a folder",
    ),
    (["data=imagefolder", "data.root={ws}/afile.txt"], "is not a folder"),
    (["data=imagefolder", "data.root={ws}/folder_empty_class"], "class folder"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5"),
    (["data.image_size=0"], "data.image_size=0 must be > 0"),
    (["trainer.device=gpu"], "trainer.device='gpu' is not one of"),
    (["trainer.precision=fp8"], "trainer.precision='fp8'"),
    (["trainer.precision=fp16", "trainer.device=cpu"], "trainer.precision='fp16' needs CUDA"),
    (["model=custom", "model._target_=os.system"], "model._target_='os.system' is refused"),
    (
        ["model=custom", "model._target_=no_such_module.make"],
        "cannot import module 'no_such_module'",
    ),
    (["data=custom", "data._target_=builtins.eval"], "data._target_='builtins.eval' is refused"),
    (["data=custom", "data._target_=badcode.make"], "expected a (train, val) pair"),
    (["resume=/no/such/run"], "no checkpoint there"),
    (["resume={run}/checkpoints/best.pt"], "holds only model weights"),
    (["trainer.checkpoint_every=-1"], "trainer.checkpoint_every=-1 must be >= 0"),
    (["resume={ws}/not_a_checkpoint.pt"], "not_a_checkpoint.pt is not a readable torch checkpoint"),
    (["model=timm", "model.name=test_resnet", "resume={run}"], "does not fit this model"),
    (
        ["model.pretrained=true", "model.pretrained_file=/no/weights.pth"],
        "model.pretrained_file='/no/weights.pth' is not a file",
    ),
    (["data=torchvision", "data.name=CIFAR1O", "data.root=."], "did you mean 'CIFAR10'"),
    (["data=torchvision", "data.name=CIFAR10", "data.root={ws}/tvempty"], "set data.download=true"),
    (["human_baseline=1.5"], "human_baseline=1.5"),
    (["aug.label_smoothing=1.2"], "aug.label_smoothing=1.2"),
    (["hydra.run.dir={run}"], "refusing to overwrite"),
    # issue 17: a key the selected option does not read, named with the option that does
    (
        ["model.name=resnet18"],
        "model.name is read by model=timm; did you mean `model=timm model.name=resnet18`?",
    ),
    (["model.pretrained=true"], "model.pretrained is read by model=timm"),
    (["data.root={ws}"], "data.root is read by data=imagefolder"),
    (["data=digits", "data.num_train=100"], "did you mean `data=synthetic data.num_train=100`?"),
    (
        ["data=imagefolder", "data.root={ws}/folder_one_class", "data.num_val=10"],
        "data.num_val is read by data=synthetic",
    ),
    (
        ["--config-dir={ws}/conf", "experiment=ignored"],
        "model.name=resnet34 (set in experiment=ignored",
    ),
    # issue 17: one message for each of these, before training
    (["--config-dir={ws}/conf", "experiment=broken"], "broken.yaml:4:1: not valid YAML"),
    (
        ["model=timm", "model.name=vit_tiny_patch16_224", "data.image_size=20"],
        "data.image_size=20 is not a multiple of the patch size 16",
    ),
    (
        ["model=timm", "model.name=vit_tiny_patch16_224", "data.image_size=32"],
        "+model.kwargs.img_size=32",
    ),
    (["data.num_classes=1"], "data.num_classes=1 must be >= 2"),
    (["data=imagefolder", "data.root={ws}/folder_one_class"], "has one class folder (a)"),
    (["checks.init_loss.tolerance=-1"], "checks.init_loss.tolerance=-1.0 must be >= 0"),
    (
        ["checks.baseline_input_independent.margin=-0.1"],
        "checks.baseline_input_independent.margin=-0.1 must be >= 0",
    ),
    (["checks.train_grads_flow.steps=0"], "checks.train_grads_flow.steps=0 must be > 0"),
    (["checks.baseline_overfit_batch.lr=0"], "checks.baseline_overfit_batch.lr=0.0 must be > 0"),
    (["data.on_unreadable=ignore"], "data.on_unreadable='ignore' is not one of skip, fail"),
]


@pytest.mark.parametrize("overrides, needle", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_exit_2_one_message_nothing_lost(
    workspace, overrides, needle, capfd, monkeypatch
):
    from runner.__main__ import main

    ws, finished = workspace
    before = _tree_digest(finished)
    monkeypatch.chdir(ws)
    monkeypatch.syspath_prepend(str(ws))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    args = [o.format(ws=ws, run=finished) for o in overrides]
    flags = [a for a in args if a.startswith("--")]  # Hydra's flags before the overrides
    code = main(
        flags + FAST + ["stage=train", "trainer.epochs=1"] + [a for a in args if a not in flags]
    )
    out = "".join(capfd.readouterr())
    assert code == 2, out
    assert needle.format(ws=ws) in out, out
    assert "Traceback" not in out
    assert "HYDRA_FULL_ERROR" not in out  # no Hydra footer under our message
    assert _tree_digest(finished) == before  # the finished run is untouched


def test_corrupt_and_zero_byte_images_are_skipped_not_fatal(cli, tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls, v in (("dark", 20), ("bright", 230)):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (v, v, v)).save(d / f"{i}.png")
    (tmp_path / "imgs" / "train" / "dark" / "zero.png").write_bytes(b"")
    good = (tmp_path / "imgs" / "train" / "bright" / "0.png").read_bytes()
    (tmp_path / "imgs" / "train" / "bright" / "truncated.png").write_bytes(good[:30])
    r = cli(
        FAST
        + [
            "data=imagefolder",
            f"data.root={tmp_path / 'imgs'}",
            "data.image_size=8",
            "stage=train",
            "trainer.epochs=1",
        ]
    )
    assert r.code == 0, r.out
    assert "zero.png" in r.out and "truncated.png" in r.out  # each named in a warning


def _folder_with_a_truncated_png(root: Path) -> Path:
    """2 classes x 4 training images (each a distinct grey), one truncated .png among them."""
    from PIL import Image

    for split in ("train", "val"):
        for c, cls in enumerate(("dark", "bright")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                v = 20 + 200 * c + 10 * i
                Image.new("RGB", (8, 8), (v, v, v)).save(d / f"{i}.png")
    good = (root / "train" / "bright" / "0.png").read_bytes()
    (root / "train" / "bright" / "1a.png").write_bytes(good[:30])  # sorts between 1 and 2
    return root


def test_unreadable_file_is_left_out_never_replaced_by_its_neighbour(tmp_path):
    """issue 17: timm's ImageDataset answers a bad file with the next one (trained twice)."""
    from omegaconf import OmegaConf

    from runner.config import DataConfig
    from runner.data import build_data

    root = _folder_with_a_truncated_png(tmp_path / "imgs")
    cfg = OmegaConf.structured(
        DataConfig(kind="imagefolder", root=str(root), image_size=8, num_workers=0)
    )
    data = build_data(cfg)
    assert len(data.train) == 9  # the file is there; it cannot be read
    loader = data.train.loader(4, True, 0, torch.device("cpu"), train=True)
    xs, ys = zip(*loader.epoch(0))
    x, y = torch.cat(xs), torch.cat(ys)
    assert len(y) == 8 and torch.bincount(y).tolist() == [4, 4]  # 8 readable, none twice
    greys = {round(float(v) * 1000) for v in x.mean(dim=(1, 2, 3))}
    assert len(greys) == 8  # 8 distinct images: no neighbour stood in for the bad one
    bad = data.unreadable_files()
    assert list(bad) == [str(root / "train" / "bright" / "1a.png")] and bad[next(iter(bad))]

    cfg.on_unreadable = "fail"
    from runner.errors import UnreadableFiles

    strict = build_data(cfg).train.loader(16, False, 0, torch.device("cpu"), train=True)
    with pytest.raises(UnreadableFiles, match=r"1a\.png") as e:
        list(strict.epoch(0))
    assert e.value.exit_code == 2 and "data.on_unreadable=skip" in str(e.value)


def test_on_unreadable_fail_stops_the_run_naming_the_file(cli, tmp_path):
    root = _folder_with_a_truncated_png(tmp_path / "imgs")
    r = cli(
        FAST
        + [
            "data=imagefolder",
            f"data.root={root}",
            "data.image_size=8",
            "stage=train",
            "trainer.epochs=1",
            "data.on_unreadable=fail",
        ]
    )
    assert r.code == 2, r.out
    assert "1a.png" in r.out and "Traceback" not in r.out


def test_a_nan_mid_run_keeps_the_best_weights_so_far(tmp_path):
    # the model turns NaN in epoch 2 (8 steps an epoch); epoch 1's best weights, held in
    # memory until the next last.pt is due (60 s), must still reach best.pt
    (tmp_path / "nanzoo.py").write_text(
        "import torch\n"
        "from runner.models import TinyCNN\n"
        "class LateNaN(TinyCNN):\n"
        "    calls = 0\n"
        "    def forward(self, x):\n"
        "        out = super().forward(x)\n"
        "        if self.training:\n"
        "            LateNaN.calls += 1\n"
        "            if LateNaN.calls > 12:\n"
        "                return out * float('nan')\n"
        "        return out\n"
    )
    r = run_cli(
        FAST
        + [
            "stage=train",
            "model=custom",
            "model._target_=nanzoo.LateNaN",
            "trainer.epochs=3",
            "trainer.checkpoint_every_s=3600",
        ],
        tmp_path,
    )
    assert r.code == 1, r.out
    from runner.checkpoint import load_checkpoint

    best = load_checkpoint(r.run_dir / "checkpoints" / "best.pt")
    assert best["loop"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in best["model"].values() if t.is_floating_point())


def test_nan_producing_lr_is_a_failed_check_exit_1(cli):
    r = cli(FAST + ["stage=train", "optim=sgd", "optim.lr=1e12", "trainer.epochs=2"])
    assert r.code == 1, r.out
    checks = {c["name"]: c for c in r.json("checks.json")}
    assert checks["train.finite"]["status"] == "fail"
    assert "optim.lr" in checks["train.finite"]["message"]


def test_sigterm_checkpoints_mid_epoch_and_resumes_exactly(tmp_path):
    args = FAST + [
        "stage=train",
        "trainer.checkpoint_every=1",  # epoch 1's last.pt tells the test epoch 2 has begun
        "trainer.epochs=3",
        "data.num_train=4096",
        "trainer.batch_size=16",
        "model.kwargs.width=8",
        "+model.kwargs.drop_rate=0.2",
    ]
    full = run_cli(args, tmp_path / "full")
    assert full.code == 0, full.out

    b = tmp_path / "b"
    proc = start_cli(args, b, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(b.glob("outputs/*/*/checkpoints/last.pt")):
        time.sleep(0.01)
    time.sleep(0.15)  # somewhere inside epoch 2
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    run_dir = next(b.glob("outputs/*/*/.hydra")).parent
    assert "resume=" in out and str(run_dir) in out  # the hint names the run
    assert not (run_dir / "summary.json").exists()
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ck["loop"]["epoch"] < 3

    # the hint as printed: resume= alone replays the interrupted run's own overrides
    assert f"python -m runner resume={run_dir}" in out
    resumed = run_cli([f"resume={run_dir}"], b)
    assert resumed.code == 0, resumed.out
    assert metric_rows(run_dir) == metric_rows(full.run_dir)


def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    args = FAST + ["stage=train", "trainer.epochs=3", "trainer.batch_size=32"]
    single = run_cli(args, tmp_path / "single")
    assert single.code == 0, single.out
    d = tmp_path / "ddp"
    d.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "runner",
            *args,
        ],
        cwd=d,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    runs = [x.parent for x in d.glob("outputs/*/*/summary.json")]
    assert len(runs) == 1  # both ranks used rank 0's run directory; only rank 0 wrote it
    a, b = metric_rows(single.run_dir), metric_rows(runs[0])
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        assert ra["step"] == rb["step"]  # same global batches
        for k in ("train_loss", "val_loss", "val_acc"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), abs=1e-4)
    s = json.loads((runs[0] / "summary.json").read_text())
    assert s["data"]["num_val"] == 128 and s["provenance"]["threads"] == 1


def _children(pid: int) -> dict:
    """{RANK: pid} of the worker processes torchrun `pid` started (Linux /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        try:
            if (
                d.name.isdigit()
                and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
            ):
                env = dict(
                    kv.split(b"=", 1)
                    for kv in (d / "environ").read_bytes().split(b"\0")
                    if b"=" in kv
                )
                out[int(env[b"RANK"])] = int(d.name)
        except (OSError, KeyError, ValueError):
            pass
    return out


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds torchrun's workers in /proc"
)
def test_ddp_sigterm_to_one_rank_stops_every_rank_at_one_step_and_resumes(tmp_path):
    """SIGTERM to rank 1 only: the ranks agree at the next check point, rank 0 (never
    signalled) writes the mid-epoch checkpoint, every rank stops with signal 15's message at
    the same step, and resume= ends where an uninterrupted run ends. (Before, rank 1
    left alone, rank 0 crashed in all_reduce and the half epoch was lost; with NCCL it hung.)"""
    args = FAST + [
        "stage=train",
        "trainer.epochs=2",
        "data.num_train=4096",
        "data.noise=2.0",
        "trainer.batch_size=16",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "runner",
        *args,
    ]
    # the uninterrupted reference: one process with the same global batches, which a DDP
    # run matches (test_ddp_two_cpu_processes_match_single_process)
    full = run_cli(args, tmp_path / "full")
    assert full.code == 0, full.out
    b = tmp_path / "b"
    b.mkdir()

    proc = subprocess.Popen(
        torchrun, cwd=b, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(b.glob("outputs/*/*/metrics.csv")):
        time.sleep(0.01)  # metrics.csv's header: training is about to start
    time.sleep(0.5)  # early in epoch 1 (256 steps of 8 images a rank; checks every 50)
    workers = _children(proc.pid)
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGTERM)
    started = time.time()
    out = proc.communicate(timeout=120)[0]
    assert time.time() - started < 25, out  # no hang, nor torchrun's 30 s wait before SIGKILL
    assert proc.returncode != 0, out  # torchrun's own code for failed workers (1)
    # each rank exits 128 + SIGTERM; torchrun ends the others as soon as one has exited, so
    # one still shutting down then may show -15 (after its checkpoint and message, below)
    codes = dict(re.findall(r"rank\s*: (\d) \(local_rank: \d\)\s+exitcode\s*: (-?\d+)", out))
    assert "143" in codes.values() and set(codes.values()) <= {"143", "-15"}, out
    stops = re.findall(r"interrupted by signal 15 in epoch \d+ after step \d+", out)
    assert len(stops) == 2 and stops[0] == stops[1], out  # both ranks, at the same step
    assert "Connection closed by peer" not in out and "RuntimeError" not in out, out
    run_dir = next(b.glob("outputs/*/*/.hydra")).parent
    assert f"resume={run_dir}" in out
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ck["loop"]["epoch"] == 0 and 0 < ck["loop"]["batch_in_epoch"] < 256, ck["loop"]

    r = subprocess.run(
        torchrun + [f"resume={run_dir}"],
        cwd=b,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    a, c = metric_rows(full.run_dir), metric_rows(run_dir)
    assert len(a) == len(c) == 2  # the interrupted epoch's train_loss: both halves, all ranks
    for ra, rc in zip(a, c):
        assert ra["step"] == rc["step"]
        for k in ("train_loss", "val_loss", "val_acc"):
            assert float(ra[k]) == pytest.approx(float(rc[k]), abs=1e-4)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_writer_runs_in_the_background_one_write_at_a_time(tmp_path):
    import threading

    from runner.checkpoint import CheckpointWriter

    class SlowRun:
        enabled = True

        def __init__(self):
            self.written, self.gate = [], threading.Event()

        def save_checkpoint(self, payload, name):
            self.gate.wait(10)
            self.written.append((name, payload["n"]))

    run = SlowRun()
    w = CheckpointWriter(run)
    w.submit({"best.pt": {"n": 1}, "last.pt": {"n": 1}})
    assert run.written == []  # returned at once: the write waits on its thread
    threading.Timer(0.2, run.gate.set).start()
    w.submit({"last.pt": {"n": 2}})  # waits for the first write (one in flight)
    assert run.written[:2] == [("best.pt", 1), ("last.pt", 1)]  # in the order given
    w.close()
    assert run.written[-1] == ("last.pt", 2)

    class Broken(SlowRun):
        def save_checkpoint(self, payload, name):
            raise OSError("disk full")

    w = CheckpointWriter(Broken())
    w.submit({"last.pt": {"n": 1}})
    with pytest.raises(OSError, match="disk full"):
        w.close()  # a write's error reaches the training thread


def test_best_pt_holds_weights_and_checkpoint_every_zero_saves_the_end(tmp_path):
    from runner.checkpoint import load_checkpoint

    r = run_cli(FAST + ["stage=train", "trainer.epochs=3", "trainer.checkpoint_every=0"], tmp_path)
    assert r.code == 0, r.out
    last = load_checkpoint(r.run_dir / "checkpoints" / "last.pt")
    assert last["loop"]["epoch"] == 3 and last["optimizer"] is not None
    best = load_checkpoint(r.run_dir / "checkpoints" / "best.pt")
    assert best["kind"] == "weights" and "optimizer" not in best and "rng" not in best
    assert {"model", "config", "meta"} <= set(best) and 1 <= best["loop"]["epoch"] <= 3
    # best.pt is written with last.pt (here only at the end), from the best epoch's snapshot
    import csv

    rows = list(csv.DictReader(open(r.run_dir / "metrics.csv")))
    best_epoch = min(rows, key=lambda row: float(row["val_loss"]))["epoch"]
    assert best["loop"]["epoch"] == int(best_epoch)
    assert best["model"].keys() == last["model"].keys()
    # and init_from= takes its weights
    again = run_cli(
        FAST + ["stage=train", "trainer.epochs=1", f"init_from={r.run_dir}"], tmp_path / "again"
    )
    assert again.code == 0, again.out


def test_stage_callbacks_stop_the_run_and_say_why(tmp_path):
    from runner.loop import EpochRecord, Stop
    from runner.stages.common import _first_stop, early_stopping
    from runner.stages.overfit import until_train_loss

    def rec(**kw):
        base = {
            "epoch": 3,
            "step": 30,
            "train_loss": 0.5,
            "train_acc": 0.9,
            "val_loss": 1.0,
            "val_acc": 0.8,
            "lr": 0.1,
            "wall_s": 1.0,
            "epoch_s": 1.0,
            "images_per_s": 10.0,
        }
        return EpochRecord(**{**base, **kw})

    assert until_train_loss(0.4)(rec()) is None and until_train_loss(0)(rec(train_loss=0)) is None
    assert "after epoch 3" in until_train_loss(0.5)(rec())
    assert early_stopping(2)(rec(evals_since_best=1)) is None
    assert "2 evaluations" in early_stopping(2)(rec(evals_since_best=2))
    assert early_stopping(2)(rec(evals_since_best=5, evaluated=False)) is None

    def pruner(r):
        return Stop("pruned", pruned=True)

    assert _first_stop([until_train_loss(0.4), pruner], rec()).pruned
    assert _first_stop([until_train_loss(0.5), pruner], rec()) == Stop(
        "training loss 0.5 <= target 0.5 after epoch 3"
    )
    # overfit's target through the CLI: epoch 1 meets it; the run stops and says why
    r = run_cli(
        FAST
        + [
            "stage=overfit",
            "model=tiny_cnn",
            "trainer.epochs=3",
            "checks.overfit_train_fit.train_loss_target=100",
        ],
        tmp_path,
    )
    s = json.loads((r.run_dir / "summary.json").read_text())
    assert s["epochs"] == 1 and s["stop_reason"].startswith("training loss"), r.out
    last = torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["loop"]["epoch"] == 1


# ----------------------------------------------------------------------------- the loop's checks
def _tiny_fit(steps_per_epoch, epochs=1, **kw):
    """runner.loop.fit on a linear model and `steps_per_epoch` batches of 8; returns the records."""
    from runner.data import TensorSplit
    from runner.loop import LoopOptions, fit

    g = torch.Generator().manual_seed(0)
    n = 8 * steps_per_epoch
    x = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (n,), generator=g)
    cpu = torch.device("cpu")
    split = TensorSplit(x, y, [0.5], [0.25])
    torch.manual_seed(0)
    model = kw.pop("model", None) or torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = kw.pop("out", [])
    opts = LoopOptions(
        check_every=kw.pop("check_every", 50), check_seconds=kw.pop("check_seconds", 2.0)
    )
    for rec in fit(
        model,
        opt,
        split.loader(8, True, 0, cpu),
        split.loader(64, False, 0, cpu),
        epochs=epochs,
        device=cpu,
        opts=opts,
        **kw,
    ):
        out.append(rec)
    return out


HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


def _count_host_reads(monkeypatch, fn):
    """Calls of the Tensor methods that copy a value to the host (a device sync on CUDA)."""
    n = [0]
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, **k):
            n[0] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    try:
        fn()
    finally:
        monkeypatch.undo()
    return n[0]


def test_loop_reads_the_loss_on_the_host_per_check_not_per_step(monkeypatch):
    from runner import loop

    # host reads do not grow with the number of steps (no per-step .item()/float()/bool())
    few = _count_host_reads(monkeypatch, lambda: _tiny_fit(6, check_every=1000, check_seconds=0))
    many = _count_host_reads(monkeypatch, lambda: _tiny_fit(60, check_every=1000, check_seconds=0))
    assert few == many, (few, many)

    # the flags are read at every check point: every check_every steps and at each epoch end
    calls = []
    real = loop._sync_flags
    monkeypatch.setattr(loop, "_sync_flags", lambda *a: calls.append(a[0].steps_before) or real(*a))
    recs = _tiny_fit(23, epochs=2, check_every=5, check_seconds=0)
    assert [r.step for r in recs] == [23, 46]
    # window starts: 0,5,10,15,20 (end of epoch 1), then 23,28,...,43 (end of epoch 2)
    assert calls == [0, 5, 10, 15, 20, 23, 28, 33, 38, 43]


class _NaNAfter(torch.nn.Module):
    def __init__(self, after):
        super().__init__()
        self.fc, self.calls, self.after = torch.nn.Linear(16, 3), 0, after

    def forward(self, x):
        self.calls += self.training
        out = self.fc(x.flatten(1))
        return out * float("nan") if self.training and self.calls > self.after else out


def test_nan_is_caught_at_the_next_check_and_a_stop_request_never_yields_nan_weights():
    from runner.errors import NonFiniteLoss

    # a NaN at step 13: the check after step 15 finds it and names step 13
    with pytest.raises(
        NonFiniteLoss, match=r"epoch 1, step 13 \(found by the check after step 15\)"
    ) as e:
        _tiny_fit(40, model=_NaNAfter(12), check_every=5, check_seconds=0)
    assert (e.value.epoch, e.value.step, e.value.found_at) == (1, 13, 15)
    # a stop request (signal) after the NaN: the loop raises instead of yielding the
    # interrupted record that the caller would checkpoint
    steps = [0]

    class Model(_NaNAfter):
        def forward(self, x):
            steps[0] += self.training
            return super().forward(x)

    records = []
    with pytest.raises(NonFiniteLoss, match="epoch 1, step 4"):
        _tiny_fit(
            40,
            model=Model(3),
            check_every=50,
            check_seconds=0,
            stop_signal=lambda: 15 if steps[0] >= 6 else 0,
            out=records,
        )
    assert records == [] and steps[0] == 6  # stopped at the request, without a record


def test_a_signal_delivered_twice_at_once_is_one_stop_request_and_a_later_one_stops_now():
    """Ctrl-C under torchrun reaches a rank from the terminal and from torchrun: one request."""
    import signal

    from runner.stages.common import _StopOnSignal

    stop = _StopOnSignal()
    try:
        stop._handle(signal.SIGINT, None)
        stop._handle(signal.SIGINT, None)  # the duplicate: still just "stop after this step"
        assert stop.requested() and stop.signum == signal.SIGINT
        stop._at -= stop.REPEAT_S + 1  # a person pressing Ctrl-C again, later
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)
    finally:
        stop.restore()
