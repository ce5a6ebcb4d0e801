"""Reliability (issue 7): bad input table, signals, DDP on 2 CPU processes."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO, metric_rows, run_cli, start_cli


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


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
    (["data=imagefolder", "data.root=/no/such/folder"], "data.root='/no/such/folder' is not a folder"),
    (["data=imagefolder", "data.root={ws}/afile.txt"], "is not a folder"),
    (["data=imagefolder", "data.root={ws}/folder_empty_class"], "class folder"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5"),
    (["data.image_size=0"], "data.image_size=0 must be > 0"),
    (["trainer.device=gpu"], "trainer.device='gpu' is not one of"),
    (["trainer.precision=fp8"], "trainer.precision='fp8'"),
    (["trainer.precision=fp16", "trainer.device=cpu"], "trainer.precision='fp16' needs CUDA"),
    (["model=custom", "model._target_=os.system"], "model._target_='os.system' is refused"),
    (["model=custom", "model._target_=no_such_module.make"], "cannot import module 'no_such_module'"),
    (["data=custom", "data._target_=builtins.eval"], "data._target_='builtins.eval' is refused"),
    (["data=custom", "data._target_=badcode.make"], "expected a (train, val) pair"),
    (["resume=/no/such/run"], "no checkpoint there"),
    (["resume={ws}/not_a_checkpoint.pt"], "not_a_checkpoint.pt is not a readable torch checkpoint"),
    (["model=timm", "model.name=test_resnet", "resume={run}"], "does not fit this model"),
    (["model.pretrained=true", "model.pretrained_file=/no/weights.pth"], "model.pretrained_file='/no/weights.pth' is not a file"),
    (["data=torchvision", "data.name=CIFAR1O", "data.root=."], "did you mean 'CIFAR10'"),
    (["data=torchvision", "data.name=CIFAR10", "data.root={ws}/tvempty"], "set data.download=true"),
    (["human_baseline=1.5"], "human_baseline=1.5"),
    (["aug.label_smoothing=1.2"], "aug.label_smoothing=1.2"),
    (["hydra.run.dir={run}"], "refusing to overwrite"),
]


@pytest.mark.parametrize("overrides, needle", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_exit_2_one_message_nothing_lost(workspace, overrides, needle, capfd, monkeypatch):
    from runner.__main__ import main

    ws, finished = workspace
    before = _tree_digest(finished)
    monkeypatch.chdir(ws)
    monkeypatch.syspath_prepend(str(ws))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    args = [o.format(ws=ws, run=finished) for o in overrides]
    code = main(FAST + ["stage=train", "trainer.epochs=1"] + args)
    out = "".join(capfd.readouterr())
    assert code == 2, out
    assert needle.format(ws=ws) in out, out
    assert "Traceback" not in out
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
    r = cli(FAST + ["data=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.image_size=8",
                    "stage=train", "trainer.epochs=1"])
    assert r.code == 0, r.out
    assert "zero.png" in r.out and "truncated.png" in r.out  # each named in a warning


def test_nan_producing_lr_is_a_failed_check_exit_1(cli):
    r = cli(FAST + ["stage=train", "optim=sgd", "optim.lr=1e12", "trainer.epochs=2"])
    assert r.code == 1, r.out
    checks = {c["name"]: c for c in r.json("checks.json")}
    assert checks["train.finite"]["status"] == "fail"
    assert "optim.lr" in checks["train.finite"]["message"]


def test_sigterm_checkpoints_mid_epoch_and_resumes_exactly(tmp_path):
    args = FAST + ["stage=train", "trainer.epochs=3", "data.num_train=4096", "trainer.batch_size=16",
                   "model.kwargs.width=8", "+model.kwargs.drop_rate=0.2"]
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

    resumed = run_cli(args + [f"resume={run_dir}"], b)
    assert resumed.code == 0, resumed.out
    assert metric_rows(run_dir) == metric_rows(full.run_dir)


def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    args = FAST + ["stage=train", "trainer.epochs=3", "trainer.batch_size=32"]
    single = run_cli(args, tmp_path / "single")
    assert single.code == 0, single.out
    d = tmp_path / "ddp"
    d.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "runner", *args], cwd=d, env=env,
                       capture_output=True, text=True, timeout=300)
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
