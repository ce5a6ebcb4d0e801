"""aug.label_preserving (issue 25): flips and rotations that move an image out of its class.

Planted: hflip, vflip, a 180-degree and a 90-degree rotation on digits (by aug= through timm
and by torchvision transforms), and a user dataset that flips in its own __getitem__.
Controls that must pass: no augmentation, aug=light on digits (crops, no flips), +-15 degree
rotations of digits, and hflip on classes it keeps (colours, textures at any phase, a
mirror-symmetric pattern). Known numbers (digits at 16 px): the cheap reader keeps 0.29 of
its skill under hflip, 0.77 under +-15 degrees.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose
from torchvision import transforms as T

from runner.checks.augment import (
    class_means_figure,
    drawn_transforms,
    label_preserving,
    pipeline_transforms,
    transform,
)
from runner.checks.registry import CHECKS


@pytest.fixture(scope="module")
def digits():
    """sklearn's digits at 16 px in [0, 1], 80/20 split."""
    from torch.nn import functional as F

    from runner.data import digits_arrays

    imgs, y = digits_arrays()
    x = F.interpolate(torch.tensor(imgs / 16.0, dtype=torch.float32)[:, None], 16, mode="bilinear")
    va = np.random.default_rng(0).random(len(y)) < 0.2
    return x[~va], y[~va], x[va], y[va]


def judge(digits, applied):
    return label_preserving(*digits, {t: "test" for t in applied}, [str(c) for c in range(10)])


def test_registered_for_stage_baseline():
    c = CHECKS["aug.label_preserving"]
    assert c.stage == "baseline" and c.where == "runner.checks.augment:label_preserving"


def test_transforms_are_exact():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert transform(x, "hflip")[0, 0, 0].tolist() == [2, 1, 0]
    assert transform(x, "vflip")[0, 0, 0].tolist() == [3, 4, 5]
    assert transform(transform(x, "rot90"), "rot270").equal(x)
    assert transform(x, "transpose").shape == (1, 1, 3, 2)


def test_transforms_read_from_the_pipeline():
    tf = T.Compose([T.RandomResizedCrop(16), T.RandomHorizontalFlip(), T.ToTensor()])
    assert set(pipeline_transforms(tf)) == {"hflip"}
    tf = T.Compose([T.RandomVerticalFlip(0.3), T.RandomRotation(180), T.RandomHorizontalFlip(0)])
    assert set(pipeline_transforms(tf, "X.transform")) == {"vflip", "rotate+180", "rotate-180"}
    assert pipeline_transforms(tf, "X.transform")["rotate+180"] == (
        "RandomRotation(degrees=180) in X.transform"
    )
    from runner.data import train_transform

    strong = compose(["aug=strong"]).aug
    found = pipeline_transforms(train_transform(strong, 16, (0.5,), (0.5,)), "aug=strong")
    assert set(found) == {"hflip", "rotate+27", "rotate-27"}  # timm RandAugment m9
    light = compose(["aug=light"]).aug
    assert pipeline_transforms(train_transform(light, 16, (0.5,), (0.5,))) == {}


def test_draws_show_a_flip_no_config_declares():
    x = torch.rand(4, 1, 8, 8)
    flips = iter([0, 1] * 8)
    found = drawn_transforms(lambda i: x[i].flip(-1) if next(flips) else x[i], range(4), 2)
    assert set(found) == {"hflip"}
    crops = T.RandomResizedCrop(8, scale=(0.7, 1.0))
    assert drawn_transforms(lambda i: crops(x[i]), range(4), 4) == {}


def test_draws_show_a_rotation_at_about_its_size(digits):
    x = digits[0]
    torch.manual_seed(0)
    big = drawn_transforms(lambda i: T.RandomRotation(180)(x[i]), range(0, 1400, 200), 4)
    assert any(n.startswith("rotate+") and float(n[7:]) >= 60 for n in big), big
    torch.manual_seed(0)
    small = drawn_transforms(lambda i: T.RandomRotation(15)(x[i]), range(0, 1400, 200), 4)
    assert all(float(n[7:]) <= 15 for n in small), small  # half the widest angle between draws


@pytest.mark.parametrize("applied", [["hflip"], ["vflip"], ["rot180"], ["rotate+90", "rotate-90"]])
def test_flips_and_turns_of_digits_warn(digits, applied):
    v = judge(digits, applied)
    assert v.status == "warn" and v.value == 1, v.message
    r = v.details["transforms"][applied[0] if "+" not in applied[0] else applied[0]]
    assert r["kept"] < 0.6 and "remove that transform" in v.message
    if applied == ["rot180"]:
        assert v.details["transforms"]["rot180"]["classes"]["6"]["read_as"] == "9"


def test_digit_controls_pass(digits):
    assert judge(digits, []).status == "pass"  # nothing applied
    v = judge(digits, ["rotate+15", "rotate-15"])
    assert v.status == "pass", v.message
    assert 0.6 < v.details["transforms"]["rotate+15"]["kept"] < 1.0


def symmetric_classes(kind: str, n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    g = np.arange(32)
    if kind == "colour":
        base = np.array([[0.8, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.2, 0.8]])
        x = base[y][:, :, None, None] * 0.6 + rng.random((n, 3, 32, 32)) * 0.4
    elif kind == "texture":  # stripes / checks at a random phase
        pats = [
            np.tile((g // 4 % 2)[None], (32, 1)),
            np.tile((g // 4 % 2)[:, None], (1, 32)),
            (g[:, None] // 4 + g[None] // 4) % 2,
        ]
        ph = rng.integers(0, 8, n)
        x = np.stack([np.roll(pats[c], (p, p), (0, 1)) for c, p in zip(y, ph)])[:, None]
        x = x.repeat(3, 1) * 0.6 + rng.random((n, 3, 32, 32)) * 0.4
    else:  # a centred disc, bar or ring: mirror symmetric
        r = np.hypot(*np.meshgrid(g - 15.5, g - 15.5))
        bar = np.abs(np.meshgrid(g - 15.5, g - 15.5)[0]) < 3
        pats = [r < 8, bar, (r > 9) & (r < 12)]
        x = np.stack([pats[c] for c in y])[:, None].repeat(3, 1) * 0.7
        x = x + rng.random((n, 3, 32, 32)) * 0.3
    x = torch.tensor(x, dtype=torch.float32)
    return x[:160], y[:160], x[160:], y[160:]


@pytest.mark.parametrize("kind", ["colour", "texture", "symmetric"])
def test_hflip_on_classes_it_keeps_passes(kind):
    v = label_preserving(*symmetric_classes(kind), {"hflip": "aug=x"})
    assert v.status == "pass", v.message
    assert v.details["transforms"]["hflip"]["kept"] > 0.9


def test_class_means_figure(digits):
    fig = class_means_figure(digits[2], digits[3], [str(c) for c in range(10)], ["hflip"])
    assert fig.axes


FLIPPING = """
import torch
from torchvision.transforms import functional as TF
from runner.data import digits_arrays

class Digits(torch.utils.data.Dataset):
    def __init__(self, train):
        x, y = digits_arrays()
        keep = (torch.arange(len(y)) % 5 != 0) == train
        self.x = torch.tensor(x / 16.0, dtype=torch.float32)[keep][:, None]
        self.targets = torch.tensor(y)[keep].tolist()
        self.train = train
    def __len__(self):
        return len(self.targets)
    def __getitem__(self, i):
        x = self.x[i]
        if self.train and torch.rand(()) < 0.5:
            x = x.flip(-1)  # the user's own augmentation: a mirror digit is no digit
        return x, self.targets[i]

class Turning(Digits):
    def __getitem__(self, i):
        x = self.x[i]
        if self.train:  # any angle: a 6 becomes a 9
            x = TF.rotate(x, float(torch.empty(()).uniform_(-180, 180)))
        return x, self.targets[i]

def make():
    return Digits(True), Digits(False)

def turning():
    return Turning(True), Turning(False)
"""


@pytest.mark.parametrize(
    "overrides, status, found",
    [
        (["data=digits", "aug=light"], "pass", set()),
        (
            ["data=digits", "aug=light", "aug.hflip=0.5", "aug.vflip=0.5"],
            "warn",
            {"hflip", "vflip"},
        ),
        (
            ["data=custom", "data._target_=flipping_digits.make", "data.image_size=8"],
            "warn",
            {"hflip"},
        ),
    ],
    ids=["digits-light", "digits-flips", "user-dataset-flips"],
)
def test_the_stage_finds_what_the_pipeline_applies(tmp_path, monkeypatch, overrides, status, found):
    from runner.data import build_data
    from runner.stages.baseline import _label_preserving

    (tmp_path / "flipping_digits.py").write_text(FLIPPING)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose(overrides)
    data = build_data(cfg.data, str(tmp_path))
    v = _label_preserving(cfg, data, cfg.checks.aug_label_preserving)
    assert v.status == status, v.message
    seen = set((v.details or {}).get("transforms", {}))
    if found is None:  # rotations by any angle: found as rotations, judged to break digits
        assert any(n.startswith("rotate") for n in seen) and "rotat" in v.message, seen
        return
    # both flips at once also draw a half turn (hflip + vflip): the draws may show it too
    assert found <= seen and all(n == "rot180" or n.startswith("rotate") for n in seen - found)
    if status == "warn":
        assert "class_means" in v.figures
        where = v.details["transforms"]["hflip"]["where"]
        assert ("draws of training example" in where) == (found == {"hflip"}), where
