"""The test split (every data kind), the final model's per-class evaluation, and `metric`.

Small and in-process: tiny generated image folders, synthetic tensors, a one-rung ladder."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, REPO
from omegaconf import OmegaConf
from PIL import Image

import runner
from runner import jobs
from runner.config import DataConfig
from runner.data import build_data
from runner.metrics import balanced_accuracy, evaluation_block, macro_f1, per_class, wilson_interval

TINY = [*FAST, "model=tiny_cnn", "data.num_train=96", "data.num_val=48", "data.image_size=8"]


def data_cfg(**kw):
    return OmegaConf.structured(DataConfig(**kw))


def folder(root: Path, splits: dict, n: int = 6, size: int = 8) -> Path:
    """root/<split>/<class>/*.png: each class its own colour plus noise (distinct files)."""
    rng = np.random.default_rng(len(str(root)))
    for split, classes in splits.items():
        for k, c in enumerate(classes):
            d = root / split / c if split else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.full((size, size, 3), 40 + 60 * k, np.uint8)
                a = np.clip(a + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{split or 'x'}{c}{i}.png")
    return root


# ----------------------------------------------------------------------------- metrics
def test_per_class_figures_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    pred[pred == 3] = 2  # class 3 is never predicted: precision 0, as zero_division=0 says
    cm = torch.bincount(torch.tensor(y * 4 + pred), minlength=16).view(4, 4)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    got = per_class(cm)
    assert np.allclose(got["precision"], p) and np.allclose(got["recall"], r)
    assert np.allclose(got["f1"], f) and np.array_equal(got["support"].numpy(), s)
    assert balanced_accuracy(cm) == pytest.approx(balanced_accuracy_score(y, pred))
    assert macro_f1(cm) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    # the Wilson interval: 8 of 10 -> [0.490, 0.943] (Wilson 1927; Newcombe 1998, table I)
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(0, 0) == [
        None,
        None,
    ]
    b = evaluation_block(cm, 0.5, ["a", "b", "c", "d"])
    assert b["n"] == 200 and b["per_class"][3]["precision"] == 0.0 and len(b["confusion"]) == 4


# ----------------------------------------------------------------------------- data kinds
def test_digits_test_fraction_leaves_val_alone_and_is_stratified():
    plain = build_data(data_cfg(kind="digits", image_size=8))
    assert plain.test is None  # data.test_fraction=0 (the default): no test split
    b = build_data(data_cfg(kind="digits", image_size=8, test_fraction=0.2))
    assert b.val.names == plain.val.names  # turning the test split on does not move val
    assert len(b.test) == pytest.approx(0.2 * 1797, abs=10)
    assert not set(b.test.names) & set(b.train.names) and not set(b.test.names) & set(b.val.names)
    assert len(b.train) + len(b.val) + len(b.test) == 1797
    counts = np.bincount(b.test.y.numpy(), minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # stratified: ~36 a class


def test_image_folder_train_and_test_without_val(tmp_path):
    root = folder(tmp_path / "d", {"train": ["a", "b"], "test": ["a", "b"]}, n=10)
    b = build_data(data_cfg(kind="imagefolder", root=str(root), image_size=8))
    assert b.class_names == ["a", "b"]  # split folders are never classes
    assert len(b.test) == 20 and len(b.train) + len(b.val) == 20
    assert sorted(np.bincount(b.val.labels.numpy())) == [2, 2]  # carved from train, stratified
    names = {Path(b.test.name(i)).parent.parent.name for i in range(len(b.test))}
    assert names == {"test"}


def test_image_folder_train_val_test(tmp_path):
    root = folder(tmp_path / "d", {"train": ["a", "b"], "valid": ["a", "b"], "test": ["a", "b"]})
    b = build_data(data_cfg(kind="imagefolder", root=str(root), image_size=8))
    assert (len(b.train), len(b.val), len(b.test)) == (12, 12, 12)
    assert {Path(b.val.name(i)).parent.parent.name for i in range(len(b.val))} == {"valid"}


def test_image_folder_single_folder_takes_test_fraction(tmp_path):
    root = folder(tmp_path / "d", {"": ["a", "b"]}, n=10)
    b = build_data(data_cfg(kind="imagefolder", root=str(root), image_size=8, test_fraction=0.2))
    assert (len(b.train), len(b.val), len(b.test)) == (12, 4, 4)


@pytest.mark.parametrize(
    "splits, needle",
    [
        (
            {"train": ["a", "b"], "test": ["a", "c"]},
            "has other classes than {root}/train: not in train/: ['c'], missing from test/: ['b']",
        ),
        ({"val": ["a", "b"], "test": ["a", "b"]}, "has val/, test/ but no train/"),
        (
            {"train": ["a", "b"], "test": ["a", "b"]},
            "1 file(s) of {root}/test are also in {root}/train (same class, name and size), "
            "e.g. a/traina0.png",
        ),
    ],
)
def test_image_folder_bad_test_split_is_one_clear_error(tmp_path, splits, needle):
    import shutil

    root = folder(tmp_path / "d", splits, n=2)
    if "copies" in needle or "also in" in needle:  # a train image copied into test/
        shutil.copy(root / "train" / "a" / "traina0.png", root / "test" / "a" / "traina0.png")
    with pytest.raises(runner.ConfigError) as e:
        build_data(data_cfg(kind="imagefolder", root=str(root), image_size=8))
    assert needle.format(root=root) in str(e.value)


def test_torchvision_official_test_split_is_test_and_val_is_carved_from_train(monkeypatch):
    import torchvision.datasets as tvd

    class Tiny(torch.utils.data.Dataset):  # a dataset with train=, as CIFAR10/MNIST have
        classes = ["zero", "one"]

        def __init__(self, root, train=True, download=False):
            n = 40 if train else 10
            self.targets = [i % 2 for i in range(n)]
            self.x = torch.rand(n, 3, 8, 8) + (0 if train else 10)  # test images: tell-tale

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return self.x[i], self.targets[i]

    monkeypatch.setattr(tvd, "Tiny", Tiny, raising=False)
    b = build_data(data_cfg(kind="torchvision", name="Tiny", root=".", image_size=8))
    assert (len(b.train), len(b.val), len(b.test)) == (32, 8, 10)
    assert sorted(np.bincount(b.val.labels.numpy())) == [4, 4]
    assert float(b.test.dataset[0][0].min()) >= 10 and float(b.val.dataset[0][0].max()) <= 1


def test_custom_callable_may_return_a_test_split(tmp_path, monkeypatch):
    (tmp_path / "three.py").write_text(
        "import torch\n"
        "def make(n=8):\n"
        "    ds = lambda m: torch.utils.data.TensorDataset(torch.rand(m, 3, 8, 8), torch.arange(m) % 2)\n"
        "    return ds(n), ds(4), ds(6)\n"
        "def same():\n"
        "    a, b = make()[:2]\n"
        "    return a, b, a\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    b = build_data(data_cfg(kind="custom", _target_="three.make", image_size=8))
    assert (len(b.train), len(b.val), len(b.test)) == (8, 4, 6)
    with pytest.raises(runner.ConfigError, match="returned the train dataset as the test"):
        build_data(data_cfg(kind="custom", _target_="three.same", image_size=8))


def test_the_docs_data_kind_example_runs(monkeypatch):
    """docs/extending.md's data kind, executed as written: one function + one registry line."""
    from runner import data

    text = (REPO / "docs" / "extending.md").read_text()
    code = re.search(r"## Add a data kind.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.setattr(data, "DATA_KINDS", dict(data.DATA_KINDS))
    namespace = {}
    exec(compile(code, "docs/extending.md", "exec"), vars(data) | namespace, namespace)
    assert "stripes" in data.DATA_KINDS
    b = build_data(data_cfg(kind="stripes", image_size=8, test_fraction=0.25))
    assert b.kind == "stripes" and b.num_classes == 2 and len(b.test) > 0


def test_the_docs_records_kind_example_runs(monkeypatch, tmp_path):
    """docs/extending.md's kind of image files: one records function + one registry line;
    splits, fingerprint and streaming come from runner/sources."""
    import numpy as np
    from PIL import Image

    from runner import data, sources
    from runner.errors import ConfigError

    text = (REPO / "docs" / "extending.md").read_text()
    code = re.search(r"### A data kind of image files.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.setattr(data, "DATA_KINDS", dict(data.DATA_KINDS))
    namespace = {}
    scope = vars(data) | vars(sources) | {"np": np, "ConfigError": ConfigError}
    exec(compile(code, "docs/extending.md", "exec"), scope, namespace)
    assert "named" in data.DATA_KINDS
    for k in range(12):
        Image.fromarray(np.full((8, 8, 3), 40 if k % 2 else 200, np.uint8)).save(
            tmp_path / f"{'dark' if k % 2 else 'light'}_{k}.png"
        )
    b = build_data(data_cfg(kind="named", root=str(tmp_path), image_size=8, channels=3))
    assert b.kind == "named" and b.class_names == ["dark", "light"]
    assert len(b.train) + len(b.val) == 12 and b.train.name(0).endswith(".png")


# ----------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("train") / "r"
    out = jobs.run(jobs.plan("train", [*TINY, "data.num_test=40"], cwd=d.parent), d, capture=True)
    assert out.code == 0, out.output
    return d


def test_train_scores_the_final_model_once_on_test_with_per_class_figures(trained):
    s = json.loads((trained / "summary.json").read_text())
    t = s["test"]
    assert s["data"]["num_test"] == 40 and t["n"] == 40 and s["test_acc"] == t["acc"]
    lo, hi = t["acc_ci95"]
    assert lo <= t["acc"] <= hi and hi - lo < 0.5
    ev = s["evaluation"]
    assert ev["epoch"] == s["best_epoch"]  # best.pt's weights: the reported model
    assert ev["val"]["acc"] == pytest.approx(s["best_val_acc"])
    assert t["val_test_gap"] == pytest.approx(ev["val"]["acc"] - t["acc"])
    assert s["metric"] == "accuracy" and s["best_val_macro_f1"] is not None
    assert len(ev["val"]["per_class"]) == 4 and np.array(ev["test"]["confusion"]).sum() == 40
    rows = list(csv.DictReader((trained / "per_class.csv").open()))
    assert {r["split"] for r in rows} == {"val", "test"} and len(rows) == 8
    assert "per-class evaluation" in (trained / "report.html").read_text()
    header = (trained / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith("val_balanced_acc,val_macro_f1")
    assert "test" not in header  # nothing per epoch looks at the test split


def test_metric_macro_f1_picks_the_best_epoch_on_it(tmp_path):
    d = tmp_path / "r"
    args = [*TINY, "metric=macro_f1", "trainer.epochs=3", "optim.lr=0.01"]
    out = jobs.run(jobs.plan("train", args, cwd=tmp_path), d, capture=True)
    assert out.code == 0, out.output
    s = json.loads((d / "summary.json").read_text())
    rows = list(csv.DictReader((d / "metrics.csv").open()))
    f1 = [float(r["val_macro_f1"]) for r in rows]
    assert s["best_epoch"] == 1 + f1.index(max(f1)) and s["metric"] == "macro_f1"
    assert s["evaluation"]["val"]["macro_f1"] == pytest.approx(max(f1), abs=1e-5)
    assert jobs.RunRecord.read(d).score == pytest.approx(s["best_val_macro_f1"])


def test_unknown_metric_is_a_config_error(tmp_path):
    with pytest.raises(runner.ConfigError) as e:
        jobs.plan("train", [*TINY, "metric=f1"], cwd=tmp_path)
    assert "metric='f1' is not one of accuracy, balanced_accuracy, macro_f1, val_loss" in str(
        e.value
    )


def test_selection_value_reads_the_metric_never_the_test_split():
    s = {
        "best_val_acc": 0.9,
        "best_val_macro_f1": 0.7,
        "best_val_loss": 0.3,
        "test_acc": 1.0,
        "metric": "macro_f1",
    }
    assert jobs.selection_value(s) == 0.7
    assert jobs.selection_value(s, "accuracy") == 0.9
    assert jobs.selection_value(s, "val_loss") == -0.3  # higher is better
    assert jobs.selection_value({"best_val_acc": None}, "balanced_accuracy") is None


def _shuffled_test(tmp_path: Path) -> None:
    (tmp_path / "shuffled.py").write_text(
        "import torch\n"
        "from runner.data import synthetic_images\n"
        "def make(shuffle=False):\n"
        "    x, y = synthetic_images(168, 4, 8, 3, 0.3, 0)\n"
        "    yt = y[136:].clone()\n"
        "    if shuffle:\n"
        "        yt = yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(1))]\n"
        "    ds = torch.utils.data.TensorDataset\n"
        "    return ds(x[:96], y[:96]), ds(x[96:136], y[96:136]), ds(x[136:], yt)\n"
    )


def test_shuffled_test_labels_change_no_decision_of_the_recipe(tmp_path):
    """Validation alone decides: with the test labels shuffled, the recipe's ladder keeps the
    same rungs on the same scores, the study picks the same best trial, squeeze adopts the
    same option, and the recipe ends on the same final model; only the test figures move."""
    _shuffled_test(tmp_path)
    rungs = 'stage.params.rungs=[{name:lr,overrides:["optim.lr=0.003"]}]'
    out = {}
    for shuffle in (False, True):
        d = tmp_path / f"shuffle-{shuffle}"
        args = [
            *[a for a in TINY if not a.startswith(("data.num_", "data=synthetic"))],
            "data=custom",
            "data._target_=shuffled.make",
            f"+data.kwargs.shuffle={shuffle}",
            "trainer.epochs=1",
            "stage.params.stages=[regularize,tune,squeeze]",
            f"stage.params.per_stage.regularize=[{rungs!r}]",
            'stage.params.per_stage.tune=["hydra.sweeper.n_trials=2"]',
            'stage.params.per_stage.squeeze=["stage.params.seeds=0","stage.params.continue_epochs=0"]',
        ]
        r = jobs.run(jobs.plan("recipe", args, cwd=tmp_path), d, capture=True)
        assert r.code in (0, 1), r.output
        rec = json.loads((d / "summary.json").read_text())
        by = {row["stage"]: Path(row["dir"]) for row in rec["stages"]}
        out[shuffle] = {
            "recipe": rec,
            "ladder": json.loads((by["regularize"] / "summary.json").read_text()),
            "study": json.loads((by["tune"] / "study.json").read_text()),
            "squeeze": json.loads((by["squeeze"] / "summary.json").read_text()),
            "root": d,
        }
    a, b = out[False], out[True]
    assert a["ladder"]["kept_overrides"] == b["ladder"]["kept_overrides"]
    assert [r["score"] for r in a["ladder"]["ladder"]] == [
        r["score"] for r in b["ladder"]["ladder"]
    ]
    assert a["ladder"]["candidates"] == b["ladder"]["candidates"] == 2
    best_a, best_b = a["study"]["best"], b["study"]["best"]
    assert (best_a["number"], best_a["value"], best_a["params"]) == (
        best_b["number"],
        best_b["value"],
        best_b["params"],
    )
    assert a["squeeze"]["adopted"]["what"] == b["squeeze"]["adopted"]["what"]
    assert a["squeeze"]["val_acc"] == b["squeeze"]["val_acc"]
    fa, fb = a["recipe"]["final"], b["recipe"]["final"]
    rel = lambda f, o: str(Path(f["weights"]).relative_to(o["root"]))  # noqa: E731
    assert rel(fa, a) == rel(fb, b) and fa["val_acc"] == fb["val_acc"]
    assert a["recipe"]["candidates"] == b["recipe"]["candidates"]
    assert a["recipe"]["test"]["n"] == b["recipe"]["test"]["n"] == 32
    assert a["recipe"]["test_acc"] != b["recipe"]["test_acc"]  # only test saw the labels


def test_inspect_reads_the_test_split_and_counts_leakage_into_it(tmp_path):
    import shutil

    from test_inspect import make_folder, photo_crops

    root = make_folder(tmp_path / "d", n_train=4, n_val=2)
    for c, tile in zip(("cat", "dog", "bird"), photo_crops(-3)):
        (root / "test" / c).mkdir(parents=True)
        Image.fromarray(tile).save(root / "test" / c / f"{c}-t.png")
    shutil.copy(root / "train" / "cat" / "cat0.png", root / "test" / "cat" / "from_train.png")
    shutil.copy(root / "val" / "dog" / "dog1.png", root / "test" / "dog" / "from_val.png")
    from conftest import compose

    from runner.stages.inspect import (
        _leakage,
        _Pictures,
        run_checks,
        scan_imagefolder,
        settings,
        stream_table,
        tables,
    )

    ic = settings()
    source = scan_imagefolder(root, 0.2, 0, ic.analysis_size)
    table, _ = stream_table(source, ic.analysis_size, num_workers=0, progress=False)
    found = run_checks(table, ic)
    checks = {v.name: v for v in found.verdicts}
    leak = checks["data.leakage"]
    assert leak.status == "fail"
    assert leak.details["counts"] == {"train-val": 0, "train-test": 1, "val-test": 1}
    assert "1 of 5 test images have a copy in train" in leak.message
    assert checks["data.class_balance"].details["totals"] == {"train": 12, "val": 6, "test": 5}
    cfg = compose(["stage=inspect"])
    doc = tables(source, table, found.groups, found.leaks, found.outliers, found.flags, cfg)
    leaks = doc["inspect.json"]["leakage"]
    assert {p["pair"] for p in leaks} == {"train-test", "val-test"}
    assert "test/cat/from_train.png" in {p.get("test") for p in leaks}
    section = _leakage(_Pictures(cfg, source, table), leak, found.leaks)  # the report's listing
    assert {r["pair"] for r in section.body[0].rows} == {"train-test", "val-test"}
    assert "pairs" in leak.figures
