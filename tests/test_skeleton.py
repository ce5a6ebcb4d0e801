"""The runnable skeleton (issue 2): CLI end to end, every data kind, models, run dir contract."""

from __future__ import annotations

import csv
import json
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, assert_contract, compose, metric_rows, run_cli, start_cli
from PIL import Image


def write_png_folder(root: Path, classes=("a", "b"), per_class=6, size=12, split=True):
    """Class a: dark images, class b: bright ones; real PNG files."""
    rng = np.random.default_rng(0)
    splits = ["train", "val"] if split else [""]
    for s in splits:
        for k, c in enumerate(classes):
            d = root / s / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = 40 + 170 * k
                arr = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{c}{i}.png")
    return root


def test_default_main_job_on_digits(cli):
    # one of the few tests that start `python -m runner` as its own process, as the README does
    r = cli(["trainer.epochs=2", "trainer.progress=false", "trainer.threads=1"], process=True)
    assert r.code == 0, r.out
    assert_contract(r.run_dir)
    s = r.json("summary.json")
    assert s["stage"] == "baseline" and s["data"]["kind"] == "digits"
    assert s["data"]["num_train"] + s["data"]["num_val"] == 1797
    assert s["val_acc"] > 0.5  # two epochs of a tiny CNN on digits
    assert s["provenance"]["versions"]["torch"] == torch.__version__.split("+")[0]
    assert s["provenance"]["data_fingerprint"]
    # trainer.precision=auto / channels_last=null: what a CPU run resolved them to
    assert (s["provenance"]["precision"], s["provenance"]["channels_last"]) == ("fp32", False)
    assert "val_acc" in r.out and str(r.run_dir) in r.out
    rows = list(csv.DictReader((r.run_dir / "metrics.csv").open()))
    assert [int(x["epoch"]) for x in rows] == [1, 2]
    names = [c["name"] for c in r.json("checks.json")]
    assert "train.finite" in names and "seed.determinism" in names
    ck = torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "loop", "config"} <= set(ck)
    assert ck["loop"]["epoch"] == 2 and isinstance(ck["config"], str)
    # the saved config keeps the choice (auto / null), not what this machine made of it, so
    # from= on another device decides again
    assert "precision: auto" in ck["config"] and "channels_last: null" in ck["config"]
    assert (r.run_dir / "checkpoints" / "best.pt").exists()
    assert (r.run_dir / ".hydra" / "config.yaml").exists()


def test_imagefolder_train_val_and_timm_model(cli, tmp_path):
    write_png_folder(tmp_path / "imgs")
    r = cli(
        FAST
        + [
            "data=imagefolder",
            f"data.root={tmp_path / 'imgs'}",
            "data.image_size=16",
            "model=timm",
            "model.name=test_resnet",
            "stage=train",
        ]
    )
    assert r.code == 0, r.out
    assert_contract(r.run_dir)
    s = r.json("summary.json")
    assert s["data"]["class_names"] == ["a", "b"] and s["data"]["num_train"] == 12
    assert s["model"] == "test_resnet"


def test_imagefolder_single_folder_split_with_workers(cli, tmp_path):
    write_png_folder(tmp_path / "imgs", per_class=10, split=False)
    r = cli(
        [
            "data=imagefolder",
            f"data.root={tmp_path / 'imgs'}",
            "data.image_size=16",
            "data.val_fraction=0.3",
            "data.num_workers=2",
            "trainer.epochs=1",
            "stage=train",
            "trainer.progress=false",
        ]
    )
    assert r.code == 0, r.out
    s = r.json("summary.json")
    assert (s["data"]["num_train"], s["data"]["num_val"]) == (14, 6)  # stratified 30%


CUSTOM = textwrap.dedent("""
    import torch
    from torch import nn

    class Pairs(torch.utils.data.Dataset):
        def __init__(self, n, dtype):
            g = torch.Generator().manual_seed(n)
            self.y = torch.arange(n) % 3
            x = torch.rand(n, 3, 10, 10, generator=g) * 0.2
            for k in range(3):
                x[self.y == k, k] += 0.7
            self.x = (x * 255).to(torch.uint8) if dtype == "uint8" else x
        def __len__(self):
            return len(self.y)
        def __getitem__(self, i):
            return self.x[i], int(self.y[i])

    def make(dtype="float"):
        return Pairs(60, dtype), Pairs(30, dtype)

    def net(num_classes, in_chans, hidden=16):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 12 * 12, hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))
""")


@pytest.mark.parametrize("dtype", ["float", "uint8"])
def test_custom_data_and_custom_model(cli, tmp_path, dtype):
    (tmp_path / "my_exp_code.py").write_text(CUSTOM)
    r = cli(
        FAST
        + [
            "data=custom",
            "data._target_=my_exp_code.make",
            f"+data.kwargs.dtype={dtype}",
            "data.image_size=12",
            "model=custom",
            "model._target_=my_exp_code.net",
            "+model.kwargs.hidden=8",
            "stage=train",
            "trainer.epochs=3",
            "optim.lr=3e-3",
        ]
    )
    assert r.code == 0, r.out
    s = r.json("summary.json")
    assert s["data"]["num_classes"] == 3 and s["data"]["in_chans"] == 3
    assert s["val_acc"] > 0.6


def test_torchvision_dataset_without_split(cli):
    r = cli(
        FAST
        + [
            "data=torchvision",
            "data.name=FakeData",
            "data.root=.",
            "+data.kwargs.size=40",
            "+data.kwargs.image_size=[3,12,12]",
            "+data.kwargs.num_classes=4",
            "data.image_size=12",
            "stage=train",
            "trainer.epochs=1",
        ]
    )
    assert r.code == 0, r.out
    s = r.json("summary.json")
    assert s["data"]["num_train"] + s["data"]["num_val"] == 40 and s["data"]["num_classes"] == 4


@pytest.mark.parametrize(
    "override, needle",
    [
        (["trainer.epoch=3"], "trainer has no key 'epoch'; did you mean 'trainer.epochs'?"),
        (
            ["stage=regularize", "stage.params.min_delt=1"],
            "did you mean 'stage.params.min_delta'",
        ),
        (  # a key that moved to its one home names the new one
            ["stage=overfit", "stage.params.train_loss_target=1"],
            "it is now checks.overfit_train_fit.train_loss_target",
        ),
        (["stage=inspect", "inspect.outlier_z=3"], "it is now checks.data_outliers.outlier_z"),
        (["trainer.epochs=abc"], "trainer.epochs"),
        (["optim.lr=-0.1"], "optim.lr=-0.1 must be > 0"),
        (["model=timm", "model.name=resnt18"], "did you mean 'resnet18'"),
        (
            ["data=imagefolder", "data.root=/no/such/folder"],
            "data.root='/no/such/folder' is not a folder",
        ),
        (["stage=nope"], "stage"),
        (["trainer.device=gpu"], "trainer.device='gpu' is not one of"),
        (["model=custom", "model._target_=os.system"], "refused"),
        (
            ["optim.name=lamb", "optim.fused=true"],
            "optim.fused=true but optim.name='lamb' has no fused kernel",
        ),
    ],
)
def test_bad_config_exit_2_with_clear_message(cli, override, needle):
    r = cli(FAST + override)
    assert r.code == 2, r.out
    assert needle in r.out
    assert "Traceback" not in r.out
    assert "To append to your config use +" not in r.out  # Hydra's advice: the schema refuses it
    assert not list(r.cwd.glob("outputs/*/*"))  # refused before it began: no run folder left


def test_all_problems_reported_at_once(cli):
    r = cli(FAST + ["optim.lr=0", "trainer.batch_size=0", "data.image_size=-1"])
    assert r.code == 2
    for key in ("optim.lr", "trainer.batch_size", "data.image_size"):
        assert key in r.out
    assert "3 problems" in r.out


NAN_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class Breaks(nn.Module):
        """Fine for `after` training steps, then produces NaN."""
        def __init__(self, num_classes, in_chans, after=10):
            super().__init__()
            self.fc = nn.Linear(in_chans * 16 * 16, num_classes)
            self.calls, self.after = 0, after
        def forward(self, x):
            out = self.fc(x.flatten(1))
            if self.training:
                self.calls += 1
                if self.calls > self.after:
                    out = out * float("nan")
            return out
''')


def test_nan_loss_stops_run_and_keeps_checkpoints(cli, tmp_path):
    (tmp_path / "nanmodel.py").write_text(NAN_MODEL)
    # 256 train images / 32 = 8 steps per epoch: step 11 is in epoch 2
    r = cli(
        FAST
        + ["model=custom", "model._target_=nanmodel.Breaks", "stage=train", "trainer.epochs=3"]
        + ["trainer.checkpoint_every=1"]  # the epoch before the NaN is saved
    )
    assert r.code == 1, r.out
    assert "epoch 2, step 11" in r.out
    checks = {c["name"]: c for c in r.json("checks.json")}
    assert checks["train.finite"]["status"] == "fail"
    assert "epoch 2, step 11" in checks["train.finite"]["message"]
    ck = torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ck["loop"]["epoch"] == 1  # the epoch before the NaN survives
    assert r.json("summary.json")["status"] == "nonfinite"
    assert_contract(r.run_dir)


def test_nan_mid_epoch_is_found_at_the_next_check_before_any_checkpoint(cli, tmp_path):
    """The loss is read on the host every 50 steps (runner.loop.CHECK_EVERY), not every step:
    a NaN in the middle of a long epoch still stops the run, names its step, exit 1, and no
    checkpoint of the NaN weights is written."""
    from runner.loop import CHECK_EVERY

    (tmp_path / "nanmodel.py").write_text(NAN_MODEL)
    # 4096 / 32 = 128 steps per epoch; the first NaN is step 159, 31 steps into epoch 2
    r = cli(
        FAST
        + [
            "model=custom",
            "model._target_=nanmodel.Breaks",
            "+model.kwargs.after=158",
            "stage=train",
            "trainer.epochs=3",
            "data.num_train=4096",
            "trainer.checkpoint_every=1",  # epoch 1's checkpoint, then the NaN in epoch 2
        ]
    )
    assert r.code == 1, r.out
    assert "epoch 2, step 159" in r.out
    m = re.search(r"epoch 2, step 159 \(found by the check after step (\d+)\)", r.out)
    found = int(m.group(1)) if m else 159  # (checks come sooner only when steps are slow)
    assert 159 <= found <= 128 + CHECK_EVERY  # in the same epoch, not at its end
    checks = {c["name"]: c for c in r.json("checks.json")}
    assert checks["train.finite"]["status"] == "fail"
    assert checks["train.finite"]["value"] == "epoch 2, step 159"
    ck = torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ck["loop"]["epoch"] == 1 and ck["loop"]["batch_in_epoch"] == 0  # epoch 1's, finite
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert r.json("summary.json")["status"] == "nonfinite"


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    """SIGKILL mid-run, then resume=<run dir>: same metrics as an uninterrupted run (CPU, same seed)."""
    import signal
    import time

    args = FAST + [
        "stage=train",
        "trainer.checkpoint_every=1",  # a checkpoint per epoch: the kill lands between two
        "trainer.epochs=6",
        "sched=cosine",
        "model.kwargs.width=8",
        "+model.kwargs.drop_rate=0.3",
        "data.num_train=1024",
    ]
    full = run_cli(args, tmp_path / "a")
    assert full.code == 0, full.out

    b = tmp_path / "b"
    proc = start_cli(args, b)
    deadline = time.time() + 240
    while time.time() < deadline:
        ck = list(b.glob("outputs/*/*/checkpoints/last.pt"))
        rows = list(b.glob("outputs/*/*/metrics.csv"))
        if ck and rows and len(rows[0].read_text().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = ck[0].parent.parent
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be killed"
    killed_at = torch.load(ck[0], weights_only=True)["loop"]["epoch"]
    assert 1 <= killed_at < 6

    resumed = run_cli(args + [f"resume={run_dir}"], b)
    assert resumed.code == 0, resumed.out
    assert resumed.run_dirs == [run_dir]  # continued in the same directory
    assert metric_rows(run_dir) == metric_rows(full.run_dir)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["resumed_from"].endswith("last.pt") and s["epochs"] == 6
    assert (run_dir / ".hydra.before-resume-1" / "overrides.yaml").exists()


def test_experiment_repo_config_dir(tmp_path):
    conf = tmp_path / "repo" / "conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "data").mkdir()
    (conf / "experiment" / "my_exp.yaml").write_text(
        textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /data: tiny4
        name: my_exp
        stage:
          name: train
        trainer:
          epochs: 1
          batch_size: 32
          progress: false
        """)
    )
    # the user's own data option, next to the packaged ones
    (conf / "data" / "tiny4.yaml").write_text(
        "kind: synthetic\nnum_classes: 3\nnum_train: 64\n"
        "num_val: 32\nimage_size: 8\nnum_workers: 0\n"
    )
    r = run_cli(["--config-dir", str(conf), "experiment=my_exp"], tmp_path / "elsewhere")
    assert r.code == 0, r.out
    s = r.json("summary.json")
    assert s["name"] == "my_exp" and s["data"]["num_classes"] == 3 and s["epochs"] == 1


def test_run_dirs_never_collide(tmp_path):
    procs = [start_cli([*FAST, "stage=train", "trainer.epochs=1"], tmp_path) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert len(list(tmp_path.glob("outputs/*/*/summary.json"))) == 2


def test_refuses_to_overwrite_a_finished_run(tmp_path):
    first = run_cli(FAST + ["stage=train", "trainer.epochs=1"], tmp_path)
    assert first.code == 0
    before = (first.run_dir / "summary.json").read_bytes()
    again = run_cli(
        FAST + ["stage=train", "trainer.epochs=1", f"hydra.run.dir={first.run_dir}"], tmp_path
    )
    assert again.code == 2 and "refusing to overwrite" in again.out
    assert (first.run_dir / "summary.json").read_bytes() == before


# ----------------------------------------------------------------------------- in-process
def test_stage_registry_matches_stage_yaml():
    from conftest import REPO

    from runner.stages import STAGES

    yaml_stages = {p.stem for p in (REPO / "conf" / "stage").glob("*.yaml")}
    assert yaml_stages == set(STAGES)
    for name in yaml_stages:
        assert compose([f"stage={name}"]).stage.name == name


def test_baseline_stage_builds_on_train_stage():
    base, train = compose(["stage=baseline"]), compose(["stage=train"])
    assert base.aug.name == "none" and base.sched.name == "none"
    assert train.stage.name == "train" and base.stage.name == "baseline"


def test_pretrained_file_loads_through_timm(tmp_path):
    import timm

    from runner.models import build_model

    src = timm.create_model("test_resnet", num_classes=7)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    cfg = compose(
        [
            "model=timm",
            "model.name=test_resnet",
            "model.pretrained=true",
            f"model.pretrained_file={tmp_path / 'w.pth'}",
        ]
    ).model
    m = build_model(cfg, num_classes=3, in_chans=3)
    body = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    got = m.state_dict()
    assert all(torch.equal(got[k], v) for k, v in body.items())
    assert got["fc.weight"].shape[0] == 3  # the classifier is new, sized for this data


def test_cosine_schedule_in_this_runs_epochs():
    from runner.models import TinyCNN
    from runner.optim import build_optimizer, build_scheduler

    cfg = compose(["sched=cosine", "sched.warmup_epochs=1"])
    m = TinyCNN(3, 1, width=4)
    opt = build_optimizer(cfg.optim, m)
    sched = build_scheduler(cfg.sched, opt, epochs=5, steps_per_epoch=10)
    lrs = []
    for step in range(1, 51):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] < 0.2 * cfg.optim.lr  # warming up
    assert max(lrs) == max(lrs[8:11]) and max(lrs) > 0.85 * cfg.optim.lr  # peak at the warmup's end
    assert lrs[-1] < 0.05 * cfg.optim.lr  # decayed by the end of *this* run


def test_tensor_loader_order_depends_on_seed_and_epoch_only():
    from runner.data import TensorSplit

    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    split = TensorSplit(x, torch.arange(10), [0.0], [1.0])
    dev = torch.device("cpu")
    a = [y.tolist() for _, y in split.loader(4, True, 1, dev).epoch(3)]
    b = [y.tolist() for _, y in split.loader(4, True, 1, dev).epoch(3)]
    c = [y.tolist() for _, y in split.loader(4, True, 1, dev).epoch(4)]
    assert a == b and a != c
    assert sorted(sum(a, [])) == list(range(10))


def test_tensor_loader_resumes_mid_epoch_with_the_same_batches():
    from runner.data import TensorSplit

    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    loader = TensorSplit(x, torch.arange(10), [0.0], [1.0]).loader(4, True, 1, torch.device("cpu"))

    def pairs(batches):  # (image values back in 0..255, labels) per batch
        return [((xb[:, 0, 0, 0] * 255).round().long().tolist(), yb.tolist()) for xb, yb in batches]

    full, rest = pairs(loader.epoch(2)), pairs(loader.epoch(2, start=1))
    assert rest == full[1:] and [len(y) for _, y in full] == [4, 4, 2]
    assert all(xs == ys for xs, ys in full)  # each image with its own label
    assert list(loader.epoch(2, start=3)) == []


def test_digits_are_scikit_learns_without_importing_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from runner.data import digits_arrays

    images, target = digits_arrays()
    d = load_digits()
    assert np.array_equal(images, d.images) and np.array_equal(target, d.target)
    # every stage process loads digits: importing scikit-learn for it costs ~1 s each
    code = "import sys, runner.data as d; d.digits_arrays(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "name, fused, expect",
    [("adam", None, True), ("adamw", None, True), ("sgd", None, True), ("adam", False, None)]
    + [("lamb", None, None), ("nadam", None, None), ("rmsprop", None, None), ("adam", True, True)],
)
def test_optimizer_is_fused_where_torch_has_a_kernel(name, fused, expect):
    from runner.optim import build_optimizer

    cfg = compose([f"optim.name={name}", f"optim.fused={'null' if fused is None else fused}"])
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3)
    )
    model(torch.zeros(1, 1, 8, 8))
    opt = build_optimizer(cfg.optim, model)
    assert bool(opt.defaults.get("fused")) == bool(expect), type(opt).__name__
    before = [q.detach().clone() for q in model.parameters()]
    torch.nn.functional.cross_entropy(
        model(torch.randn(4, 1, 8, 8)), torch.arange(4) % 3
    ).backward()
    opt.step()  # the kernel runs on these parameters, and moves them
    assert any(not torch.equal(a, q) for a, q in zip(before, model.parameters()))


def test_input_path_auto_is_bf16_channels_last_on_cuda_only(monkeypatch):
    from runner.stages.common import input_path

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert input_path("auto", None, cpu) == ("fp32", False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert input_path("auto", None, cuda) == ("bf16", True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert input_path("auto", None, cuda) == ("fp32", True)  # pre-Ampere: no fast bf16
    # a value the user set is kept, on any device
    assert input_path("fp32", False, cuda) == ("fp32", False)
    assert input_path("bf16", True, cpu) == ("bf16", True)
    t = compose([]).trainer
    assert (t.precision, t.channels_last) == ("auto", None)


def test_malicious_checkpoint_is_refused(tmp_path):
    from runner.checkpoint import load_checkpoint
    from runner.errors import ConfigError

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"model": Evil(), "loop": {}}, p)
    with pytest.raises(ConfigError, match="evil.pt is refused.*Unsupported global"):
        load_checkpoint(p)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pt is refused"):
        load_checkpoint(tmp_path / "junk.pt")


def test_nonfinite_verdict_is_not_nan_in_json():
    from runner.checks.training import train_finite
    from runner.errors import NonFiniteLoss

    v = train_finite(NonFiniteLoss(2, 11, "loss", math.nan), 10).to_dict()
    assert v["status"] == "fail" and json.dumps(v)


def test_data_workers_default_to_none_on_a_cpu_and_some_on_cuda(monkeypatch):
    import os

    import torch

    from runner.data import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert default_workers(torch.device("cpu")) == 0  # the training threads use the cores
    assert default_workers(torch.device("cuda", 0)) == 8
    assert default_workers(None, training=False) == 8  # stage=inspect: reading only
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_workers(torch.device("cuda", 0)) == 1
    assert default_workers(None, training=False) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert default_workers(None, training=False) == 0
    assert compose([]).data.num_workers is None  # null: chosen per device
