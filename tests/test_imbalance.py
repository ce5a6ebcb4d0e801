"""trainer.imbalance (runner/imbalance.py): class-weighted loss, a balanced sampler, auto, and
the regularize rung that tries the weights only on imbalanced data."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import FAST
from PIL import Image

from runner.data import batch_indices
from runner.imbalance import SoftTargetCE, resolve

TINY = [x for x in FAST if x != "data=synthetic"] + ["model=tiny_cnn", "data.image_size=16"]


def test_resolve_weights_each_class_the_same_and_auto_follows_the_ratio():
    labels = torch.tensor([0] * 90 + [1] * 10)
    imb = resolve("class_weights", labels, 2, 10.0)
    w = imb.class_weights
    assert imb.applied == "class_weights" and imb.ratio == 9.0 and imb.counts == [90, 10]
    assert torch.allclose(w, torch.tensor([100 / 180, 100 / 20]))
    assert float(w[0] * 90) == pytest.approx(float(w[1] * 10))  # each class weighs the same
    assert resolve("auto", labels, 2, 10.0).applied == "none"  # 9:1 < 10
    assert resolve("auto", labels, 2, 5.0).applied == "class_weights"
    s = resolve("balanced_sampler", labels, 2, 10.0)
    assert s.class_weights is None and s.sample_weights.shape == (100,)
    # a class with no training example: infinitely imbalanced, weight 0, auto weighs
    empty = resolve("auto", labels, 3, 10.0)
    assert empty.applied == "class_weights" and float(empty.class_weights[2]) == 0.0
    assert empty.record()["ratio"] is None


def test_soft_target_weights_reduce_to_torchs_weighted_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2])
    w = torch.tensor([0.5, 2.0, 1.0])
    hard = torch.nn.functional.cross_entropy(logits, y, weight=w)
    soft = SoftTargetCE(w)(logits, torch.nn.functional.one_hot(y, 3).float())
    assert float(soft) == pytest.approx(float(hard), rel=1e-6)


def test_the_balanced_sampler_draws_each_class_about_equally_and_repeatably():
    labels = torch.tensor([0] * 900 + [1] * 100)
    sw = resolve("balanced_sampler", labels, 2, 10.0).sample_weights
    epoch = torch.cat(batch_indices(1000, 100, True, 0, 3, weights=sw))
    assert len(epoch) == 1000
    share = float((labels[epoch] == 1).float().mean())
    assert 0.44 < share < 0.56, share  # 10% of the data, half of what is drawn
    again = torch.cat(batch_indices(1000, 100, True, 0, 3, weights=sw))
    assert torch.equal(epoch, again)  # seeded by (seed, epoch): a resume draws the same
    other = torch.cat(batch_indices(1000, 100, True, 0, 4, weights=sw))
    assert not torch.equal(epoch, other)
    # evaluation order is untouched
    assert torch.equal(
        torch.cat(batch_indices(10, 4, False, 0, 0, weights=sw[:10])), torch.arange(10)
    )


def imbalanced_manifest(root, big=40, small=4):
    rng = np.random.default_rng(0)
    rows = []
    for c, (name, n) in enumerate((("common", big), ("rare", small))):
        for k in range(n):
            a = (rng.random((16, 16, 3)) * 80).astype(np.uint8)
            a[c * 8 : c * 8 + 6, :, c] = 250
            p = root / name / f"{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(p)
            rows.append(
                {
                    "path": f"{name}/{k}.png",
                    "label": name,
                    "split": "val" if k % 4 == 0 else "train",
                }
            )
    f = root / "labels.csv"
    with f.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return f


def test_auto_weighs_an_imbalanced_run_and_the_ladder_tries_it_only_there(tmp_path, cli):
    f = imbalanced_manifest(tmp_path / "imgs")  # train: 30 common, 3 rare
    data = ["data=manifest", f"data.files={f}", *TINY, "trainer.epochs=1"]
    r = cli(["stage=train", *data, "trainer.imbalance=auto"])
    assert r.code == 0, r.out
    imb = r.json("summary.json")["imbalance"]
    assert imb["applied"] == "class_weights" and imb["train_class_counts"] == [30, 3]
    assert imb["class_weights"] == pytest.approx([33 / 60, 33 / 6], rel=1e-5)
    assert "10.0x the examples of the smallest" in r.out
    s = cli(["stage=train", *data, "trainer.imbalance=balanced_sampler"])
    assert s.code == 0, s.out
    assert s.json("summary.json")["imbalance"]["applied"] == "balanced_sampler"
    # the ladder's class-weights rung: trained on imbalanced data, skipped on balanced data
    rung = [
        "stage=regularize",
        "stage.params.rungs=[{name:class-weights,overrides:"
        '["trainer.imbalance=class_weights"],when:imbalanced}]',
        "trainer.epochs=1",
    ]
    g = cli([*rung, *data, "hydra.run.dir=reg_imb"])
    assert g.code in (0, 1), g.out
    ladder = list(csv.DictReader((tmp_path / "reg_imb" / "ladder.csv").open()))
    assert ladder[1]["name"] == "class-weights" and not ladder[1]["error"], ladder
    b = cli([*rung, *FAST, "hydra.run.dir=reg_bal"])
    assert b.code in (0, 1), b.out
    ladder = list(csv.DictReader((tmp_path / "reg_bal" / "ladder.csv").open()))
    assert ladder[1]["error"].startswith("skipped: the training classes are balanced"), ladder


IMBALANCED_DIGITS = """
import numpy as np
import torch

from runner.data import digits_arrays


class Images:
    def __init__(self, x, y):
        self.x = torch.from_numpy(np.round(x * 255 / 16).astype(np.uint8))[:, None]
        self.targets = torch.from_numpy(y).long()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])


def make(minority=(3, 8), ratio=20):
    x, y = digits_arrays()
    val = np.arange(len(y)) % 5 == 0
    train = ~val
    for c in minority:  # 1 in `ratio` of their training images kept: 20:1
        idx = np.flatnonzero(train & (y == c))
        train[idx[len(idx) // ratio :]] = False
    return Images(x[train], y[train]), Images(x[val], y[val])
"""


def test_on_a_20_to_1_split_the_remedy_raises_minority_recall_beyond_noise(tmp_path, cli):
    """Digits with classes 3 and 8 at 1:20 in training (val as it is): without a remedy the
    model rarely predicts them; class weights raise their recall on val by more than twice
    the standard error of the difference."""
    (tmp_path / "imbalanced_digits.py").write_text(IMBALANCED_DIGITS)
    base = [
        "stage=train",
        "data=custom",
        "data._target_=imbalanced_digits.make",
        "data.image_size=16",
        *[x for x in TINY if not x.startswith("data.image")],
        "trainer.epochs=5",
    ]
    recall = {}
    for setting in ("none", "auto"):
        r = cli([*base, f"trainer.imbalance={setting}", f"hydra.run.dir={setting}"])
        assert r.code == 0, r.out
        rows = [
            x
            for x in csv.DictReader((tmp_path / setting / "per_class.csv").open())
            if x["split"] == "val" and x["class"] in ("3", "8")
        ]
        hit = sum(float(x["recall"]) * int(x["support"]) for x in rows)
        n = sum(int(x["support"]) for x in rows)
        recall[setting] = (hit / n, n)
    s = r.json("summary.json", tmp_path / "auto")
    assert s["imbalance"]["applied"] == "class_weights"  # auto: 20:1 >= 10
    (p0, n), (p1, _) = recall["none"], recall["auto"]
    se = math.sqrt(p0 * (1 - p0) / n + p1 * (1 - p1) / n)
    assert p1 - p0 > 2 * se, (recall, se)
