"""A run's final model used: `predict` (files, folders, the run's own splits) and `export`
(ONNX checked in onnxruntime, TorchScript, safetensors + config.json for timm's local-dir), and
squeeze's ensemble as one model file that predicts with the accuracy squeeze reports.

Two tiny trained runs and one squeeze run over them are shared by every test (module fixture).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FAST, assert_contract, run_cli

import runner
from runner.errors import ConfigError

TINY = FAST + [
    "model=timm",
    "model.name=test_resnet",
    "trainer.epochs=1",
    "data.num_train=96",
    "data.num_val=64",
    "data.num_test=48",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(cwd, run a, run b, squeeze dir): two seeds of one config, and squeeze over both with
    its ensemble adopted (choose made to take it: which option wins is test_squeeze's)."""
    import runner.stages.squeeze as squeeze

    cwd = tmp_path_factory.mktemp("predict")
    for name, seed in (("a", 0), ("b", 3)):
        r = run_cli(TINY + ["stage=train", f"hydra.run.dir={name}", f"seed={seed}"], cwd)
        assert r.code == 0, r.out
    take_ensemble = lambda options: next(o for o in options if o["what"] == "ensemble")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(squeeze, "choose", take_ensemble)
        q = run_cli(
            TINY
            + [
                "stage=squeeze",
                "hydra.run.dir=sq",
                "stage.params.runs=[a,b]",
                "stage.params.k=2",
                "stage.params.seeds=0",
                "stage.params.continue_epochs=0",
            ],
            cwd,
        )
    assert q.code == 0, q.out
    return cwd, cwd / "a", cwd / "b", cwd / "sq"


def _read(p: Path):
    with p.open() as f:
        return list(csv.DictReader(f))


def test_checkpoint_carries_what_using_it_needs(runs):
    _, a, _, _ = runs
    meta = torch.load(a / "checkpoints" / "best.pt", weights_only=True)["meta"]
    assert meta["class_names"] == ["c0", "c1", "c2", "c3"]
    assert meta["architecture"] == "test_resnet" and meta["input_size"] == [3, 16, 16]
    s = json.loads((a / "summary.json").read_text())["data"]
    assert meta["mean"] == s["mean"] and meta["std"] == s["std"]
    assert (meta["interpolation"], meta["crop_pct"], meta["crop_mode"]) == (
        "bilinear",
        1.0,
        "center",
    )
    assert meta["channels"] == "RGB" and meta["pipeline"] == "tensor"


def test_predict_val_reproduces_the_reported_accuracy(runs):
    cwd, a, _, _ = runs
    res = runner.predict(a, split="val", out=cwd / "val.csv", topk=2)
    s = json.loads((a / "summary.json").read_text())
    assert res.accuracy == s["best_val_acc"] == res.reported  # best.pt is the best epoch's
    rows = _read(cwd / "val.csv")
    assert len(rows) == len(res) == 64
    assert list(rows[0]) == [
        "path", "label", "prob", "true_label", "correct",
        "top1_label", "top1_prob", "top2_label", "top2_prob", "error",
    ]  # fmt: skip
    assert sum(int(r["correct"]) for r in rows) == round(res.accuracy * 64)
    # Run.predict is the same call; the flip TTA runs too
    again = runner.load(a).predict(split="val", tta="flip")
    assert len(again) == 64 and again.accuracy is not None
    # the test split, scored once on the final model, predicts as the run reported it
    test = runner.predict(a, split="test")
    assert len(test) == 48 and test.accuracy == s["test_acc"] == test.reported


def test_predict_files_use_the_runs_preprocessing_and_list_unreadable_ones(runs, tmp_path):
    """The val images written as PNG files predict as the split does (the same normalised
    tensors); a folder is searched recursively; an unreadable file is a row with its error."""
    from PIL import Image

    from runner.data import build_data
    from runner.inference import load_final

    _, a, _, _ = runs
    fm = load_final(a)
    val = build_data(fm.config.data, str(a.parent)).val
    (tmp_path / "imgs" / "deeper").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(val.x[i].permute(1, 2, 0).numpy()).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "deeper" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image: not listed")
    res = runner.predict(a, [tmp_path / "imgs"], out=tmp_path / "p.csv")
    by_split = {r["path"]: r for r in runner.predict(a, split="val")}
    got = {Path(r["path"]).name: r for r in res}
    assert set(got) == {"0.png", "1.png", "2.png", "broken.png"}
    for i in range(3):
        r, want = got[f"{i}.png"], by_split[val.name(i)]
        assert (r["label"], r["prob"]) == (want["label"], want["prob"]) and r["error"] == ""
    assert (
        got["broken.png"]["label"] == "" and "cannot identify image" in got["broken.png"]["error"]
    )
    assert any("broken.png" in r["path"] and r["error"] for r in _read(tmp_path / "p.csv"))


def test_predict_bad_input_is_one_message_and_exit_2(runs, tmp_path):
    cwd, a, _, _ = runs
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="a folder with no images"):
        runner.predict(a, [tmp_path / "empty"])
    no_test = [o for o in TINY if not o.startswith("data.num_test=")] + ["stage=train"]
    r = run_cli(no_test + ["hydra.run.dir=no-test"], tmp_path)
    assert r.code == 0, r.out
    with pytest.raises(ConfigError, match="has no test split; its splits: train, val"):
        runner.predict(tmp_path / "no-test", split="test")
    with pytest.raises(ConfigError, match="'nope' is not a split"):
        runner.predict(a, split="nope")
    # a run that never finished (no summary.json) and one without weights
    unfinished = tmp_path / "unfinished"
    shutil.copytree(a, unfinished)
    (unfinished / "summary.json").unlink()
    with pytest.raises(ConfigError, match="this run has not finished"):
        runner.predict(unfinished, split="val")
    bare = tmp_path / "bare"
    shutil.copytree(a, bare)
    shutil.rmtree(bare / "checkpoints")
    with pytest.raises(ConfigError, match="has no model weights"):
        runner.predict(bare, split="val")
    r = run_cli(["predict", str(unfinished), "--split", "val", "--out", "x.csv"], tmp_path)
    assert r.code == 2 and "config error:" in r.out and str(unfinished) in r.out, r.out
    assert not (tmp_path / "x.csv").exists()
    r = run_cli(["predict", str(a), "--split", "val", "--out", "ok.csv"], tmp_path)
    assert r.code == 0 and "val accuracy" in r.out and "the run reports" in r.out, r.out


def test_the_adopted_ensemble_is_one_file_that_predicts_squeezes_accuracy(runs):
    cwd, a, b, sq = runs
    s = json.loads((sq / "summary.json").read_text())
    assert s["adopted"]["what"] == "ensemble"
    assert s["adopted"]["weights"] == str(sq / "ensemble.pt")
    ck = torch.load(sq / "ensemble.pt", weights_only=True)  # data, like every checkpoint
    assert ck["combine"] == "mean_logits" and [m["run"] for m in ck["members"]] == s["members"]
    assert runner.load(sq).weights == sq / "ensemble.pt"
    res = runner.predict(sq, split="val")
    assert res.accuracy == s["val_acc"] == s["ensemble_acc"]
    test = runner.predict(sq, split="test")  # the adopted ensemble's test figure, reproduced
    assert test.accuracy == s["test_acc"] == test.reported and len(test) == 48
    assert type(runner.load(sq).model()).__name__ == "Ensemble"
    r = run_cli(TINY + ["stage=train", "hydra.run.dir=t", "init_from=sq/ensemble.pt"], cwd)
    assert r.code == 2 and "is an ensemble of 2 models, not one model's weights" in r.out, r.out
    assert_contract(sq)
    # the recipe's final model is that file too (final.weights), and predicts its val_acc
    from runner.stages.recipe import final_model

    row = {"stage": "squeeze", "dir": str(sq), "exit_code": 0, "val_acc": s["val_acc"]}
    final = final_model([row])
    assert final["weights"] == str(sq / "ensemble.pt")
    rec = cwd / "recipe"
    rec.mkdir()
    summary = {"stage": "recipe", "status": "finished", "exit_code": 0, "val_acc": s["val_acc"]}
    (rec / "summary.json").write_text(json.dumps({**summary, "final": final, "stages": [row]}))
    assert runner.predict(rec, split="val").accuracy == s["val_acc"]


def test_export_onnx_torchscript_safetensors_match_and_load_in_timm(runs, tmp_path):
    import onnxruntime as ort
    import timm

    from runner.inference import load_final

    _, a, _, _ = runs
    out = tmp_path / "exp"
    res = runner.export(a, ["onnx", "torchscript", "safetensors"], out)
    assert sorted(res.files) == sorted(
        ["model.onnx", "model.torchscript.pt", "model.safetensors", "config.json", "README.md"]
    )
    assert set(p.name for p in out.iterdir()) == set(res.files)
    fm = load_final(a)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        ref = fm.module(x)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert torch.allclose(torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]), ref, atol=1e-4)
    m = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    dc = timm.data.resolve_data_config({}, model=m)
    assert dc["input_size"] == (3, 16, 16) and list(dc["mean"]) == fm.pre.mean
    assert m.pretrained_cfg["label_names"] == ["c0", "c1", "c2", "c3"]
    card = (out / "README.md").read_text()
    assert "95% Wilson interval" in card and "tolerance |a - b| <= 0.0001 + 0.001 * |b|" in card
    # made as mkdir/open() make files (the umask decides), never mkdtemp's private 0700/0600
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}


def test_export_of_the_ensemble_and_bad_input(runs, tmp_path, monkeypatch):
    import importlib.util

    _, a, _, sq = runs
    r = run_cli(["export", str(sq), "--format", "onnx", "--out", "ens"], tmp_path)
    assert r.code == 0 and "onnx: matches PyTorch's logits" in r.out, r.out
    assert "not a timm architecture" in r.out
    cfg = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert cfg["recipe_runner"]["kind"] == "ensemble" and cfg["label_names"][0] == "c0"
    # the card's figures are the ensemble's (squeeze scored it), never a member run's own
    s = json.loads((sq / "summary.json").read_text())
    card = (tmp_path / "ens" / "README.md").read_text()
    assert (
        f"- test_acc: {s['test_acc']:.4f}" in card and f"- test_loss: {s['test_loss']:.4f}" in card
    )
    member = json.loads((a / "summary.json").read_text())
    if round(member["test_loss"], 4) != round(s["test_loss"], 4):
        assert f"{member['test_loss']:.4f}" not in card
    r = run_cli(["export", str(a), "--format", "pickle"], tmp_path)
    assert r.code == 2 and "'pickle' is not an export format" in r.out, r.out
    r = run_cli(["export", str(a), "--out", "ens"], tmp_path)  # never over an export
    assert r.code == 2 and "already exists" in r.out, r.out
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *x: None if n == "onnxruntime" else real(n, *x)
    )
    with pytest.raises(
        ConfigError, match=r"needs onnxruntime, not installed: pip install -e '\.\[export\]'"
    ):
        runner.export(a, ["onnx"], tmp_path / "no")
    assert not (tmp_path / "no").exists()


UNTRACEABLE = """
import torch

class Net(torch.nn.Module):
    def __init__(self, num_classes=4, in_chans=3):
        super().__init__()
        self.fc = torch.nn.Linear(in_chans, num_classes)

    def forward(self, x):
        m = torch.from_numpy(x.detach().numpy().mean(axis=(2, 3)))  # leaves torch: untraceable
        return self.fc(m)

def make(num_classes=4, in_chans=3, **kw):
    return Net(num_classes, in_chans)
"""


def test_export_of_a_model_that_cannot_be_traced_leaves_nothing(runs, tmp_path, monkeypatch):
    """A forward that leaves torch (numpy) traces to a constant: the check on a second batch
    catches it, with one message naming the file, and no folder is left behind."""
    from omegaconf import OmegaConf

    _, a, _, _ = runs
    (tmp_path / "untraceable.py").write_text(UNTRACEABLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from untraceable import make

    ck = torch.load(a / "checkpoints" / "best.pt", weights_only=True)
    cfg = OmegaConf.create(ck["config"])
    cfg.model._target_, cfg.model.name = "untraceable.make", None
    ck.update(config=OmegaConf.to_yaml(cfg), model=make().state_dict())
    torch.save(ck, tmp_path / "u.pt")
    with pytest.raises(ConfigError, match="names code"):  # the checkpoint's code: not run
        runner.export(tmp_path / "u.pt", ["onnx"], tmp_path / "out")
    for fmt in ("onnx", "torchscript"):
        with pytest.raises(ConfigError, match=f"export --format {fmt}: .*u.pt: .*differ"):
            runner.export(tmp_path / "u.pt", [fmt], tmp_path / "out", trust_run_configs=True)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder


def test_an_image_file_of_tensor_data_gets_the_runs_own_tensors():
    """digits are 8x8 arrays resized by torch into the run's tensors: an 8x8 file of one goes
    through the same resize and normalisation (Preprocess, pipeline "tensor"), to the bit."""
    import numpy as np
    from conftest import compose
    from PIL import Image

    from runner.data import build_data, digits_arrays
    from runner.inference import Preprocess

    data = build_data(compose(["data=digits"]).data)
    pre = Preprocess(
        [1, 16, 16], list(data.mean), list(data.std), data.interpolation, pipeline="tensor"
    )
    tf = pre.transform()
    images, _ = digits_arrays()
    for i in (0, 7):
        k = int(data.val.name(i).lstrip("#"))
        img = Image.fromarray(np.round(images[k] * (255.0 / 16.0)).astype(np.uint8))
        assert torch.equal(tf(img), data.val.get([i])[0][0])
