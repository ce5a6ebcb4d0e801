"""Issue 25's checks on planted bugs, and clean controls that must pass them.

- input.split_consistency: val (or test) fed through another pipeline than train - left
  unnormalised, scaled to 0-255, channels reordered, resized another way (blurrier) - fails;
  clean digits, clean synthetic and train-only augmentation (aug=light, aug=strong) pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, compose

from runner.checks.consistency import sharpness, split_consistency
from runner.data import TensorSplit, build_data, train_transform


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CPU = torch.device("cpu")


def take(loader, n=256):
    xs, got = [], 0
    for xb, _ in loader.epoch(0):
        xs.append(xb)
        got += len(xb)
        if got >= n:
            break
    return torch.cat(xs)[:n]


_AUG = {}


def views(data, aug="none", n=128):
    """What the baseline hands the check: each split through its eval loader, and the
    training batches as the loop feeds them (with `aug`)."""
    if aug not in _AUG:
        _AUG[aug] = compose([f"aug={aug}"]).aug
    tf = train_transform(_AUG[aug], data.image_size, data.mean, data.std, data.interpolation)
    fed = take(data.train.loader(32, True, 0, CPU, train=True, aug_transform=tf), n)
    out = {s: take(sp.loader(64, True, 0, CPU, train=False)) for s, sp in data.splits().items()}
    return out, fed


@pytest.fixture(scope="module")
def digits():
    return build_data(compose(["data=digits", "data.test_fraction=0.15"]).data)


@pytest.fixture(scope="module")
def colour():
    """Synthetic squares tinted per channel (R bright, B dark): channel order matters."""
    data = build_data(compose(["data=synthetic"]).data)
    tint = torch.tensor([1.0, 0.7, 0.35]).view(1, 3, 1, 1)
    for split in (data.train, data.val):
        split.x = (split.x.float() * tint).round().to(torch.uint8)
    x = data.train.x.float() / 255
    mean, std = x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()
    data.mean, data.std = tuple(mean), tuple(std)
    for split in (data.train, data.val):
        split.mean, split.std = tuple(mean), tuple(std)
    data.test = None
    return data


def planted_val(data, val_x):
    """The bug lives in the val split itself: its loader feeds what it was built with."""
    return TensorSplit(val_x, data.val.y, data.val.mean, data.val.std)


# ----------------------------------------------------------------------------- split consistency
@pytest.mark.parametrize("aug", ["light", "strong"])
def test_split_consistency_passes_clean_digits_with_train_only_augmentation(digits, aug):
    v, fed = views(digits, aug)
    verdict = split_consistency(v, fed, digits.mean, digits.std)
    assert verdict.status == "pass", verdict.message
    assert set(verdict.details) >= {"train", "val", "test", "train (as fed, augmented)"}
    # measured: val within 0.01 train std and 1% in std of train; RandAugment's fed batches 0.32
    assert abs(verdict.details["val"]["shift"][0]) < 0.05


def test_split_consistency_passes_clean_synthetic_and_colour(colour):
    data = build_data(compose(["data=synthetic"]).data)
    for d in (data, colour):
        v, fed = views(d, "strong")
        verdict = split_consistency(v, fed, d.mean, d.std)
        assert verdict.status == "pass", verdict.message


def _with_val(data, make):
    """A copy of the bundle whose val split holds `make(raw val uint8)` (a planted bug)."""
    import copy

    bad = copy.copy(data)
    bad.val = make(data.val)
    return bad


def test_split_consistency_fails_val_not_normalised(digits):
    # val normalised with mean 0, std 1: the loader feeds raw 0-1 pixels
    bad = _with_val(digits, lambda s: TensorSplit(s.x, s.y, (0.0,), (1.0,)))
    v, fed = views(bad)
    verdict = split_consistency(v, fed, digits.mean, digits.std)
    assert verdict.status == "fail"
    assert "val: std of channel(s) [0]" in verdict.message and "Normalize" in verdict.message
    assert "test" not in verdict.details["differences"]
    assert verdict.figures["splits"] is not None


def test_split_consistency_fails_val_scaled_by_255_and_names_it(digits):
    v, fed = views(digits)
    v["val"] = v["val"] * 255
    verdict = split_consistency(v, fed, digits.mean, digits.std)
    assert verdict.status == "fail" and "0-255" in verdict.message


def test_split_consistency_fails_other_normalisation_values(digits):
    # val normalised with ImageNet's grey statistics instead of train's measured ones
    bad = _with_val(digits, lambda s: TensorSplit(s.x, s.y, (0.449,), (0.226,)))
    verdict = split_consistency(*views(bad), digits.mean, digits.std)
    assert verdict.status in ("warn", "fail"), verdict.message
    assert "val:" in verdict.message


def test_split_consistency_fails_swapped_channels(colour):
    bad = _with_val(colour, lambda s: planted_val(colour, s.x.flip(1)))
    verdict = split_consistency(*views(bad), colour.mean, colour.std)
    assert verdict.status == "fail", verdict.message
    assert "another order" in verdict.message and "BGR" in verdict.message
    assert verdict.details["val"]["channel_order"] == [2, 1, 0]


@pytest.mark.parametrize("factor", [0.5, 0.25])
def test_split_consistency_fails_val_resized_another_way(digits, factor):
    def blur(s):
        x = s.x.float()
        small = F.interpolate(x, scale_factor=factor, mode="bilinear", antialias=True)
        back = F.interpolate(small, size=x.shape[-2:], mode="bilinear")
        return planted_val(digits, back.round().clamp(0, 255).to(torch.uint8))

    verdict = split_consistency(*views(_with_val(digits, blur)), digits.mean, digits.std)
    assert verdict.status == "fail", verdict.message
    assert "blurrier than train" in verdict.message
    assert verdict.details["val"]["sharpness_ratio"][0] < 0.67


def test_split_consistency_fails_another_size_or_channel_count(digits):
    v, fed = views(digits)
    v["test"] = F.interpolate(v["test"], size=(24, 24), mode="bilinear")
    verdict = split_consistency(v, fed, digits.mean, digits.std)
    assert verdict.status == "fail"
    assert "test: tensors are 1x24x24 but train's are 1x16x16" in verdict.message


def test_split_consistency_flags_an_unnormalised_train_pipeline(digits):
    v, _ = views(digits)
    m, s = digits.mean[0], digits.std[0]
    raw_fed = v["train"] * s + m  # the training batches skip Normalize, eval reads do not
    verdict = split_consistency(v, raw_fed, digits.mean, digits.std)
    assert verdict.status == "fail"
    assert "train as the loop feeds it" in verdict.message


def test_sharpness_ignores_scale_and_drops_with_blur():
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sharpness(x), sharpness(x * 255 - 3), rtol=1e-4)
    blurred = F.avg_pool2d(x, 3, 1, 1)
    assert (sharpness(blurred) < 0.5 * sharpness(x)).all()


ZOO = '''
from runner.data import synthetic_images


class Split:
    """(image, label) items; `scale` plants the bug: floats 0-255 where 0-1 are expected."""

    def __init__(self, x, y, scale=None):
        self.x, self.y, self.scale = x, y, scale

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = self.x[i] if self.scale is None else self.x[i].float() * self.scale
        return img, int(self.y[i])


def make(val_scale=None):
    x, y = synthetic_images(384, 4, 16, 3, 0.1, 0)
    return Split(x[:256], y[:256]), Split(x[256:], y[256:], val_scale)
'''


def test_baseline_fails_a_val_split_fed_0_255_end_to_end(cli, tmp_path):
    """data=custom whose val dataset hands out float 0-255 pixels (0-1 expected): the run
    trains, and input.split_consistency fails it, naming val and the scale."""
    (tmp_path / "zoo25.py").write_text(ZOO)
    off = [
        f"checks.{k}.enabled=false"
        for k in (
            "train_grads_flow",
            "train_batch_independence",
            "seed_determinism",
            "predictions",
            "baseline_input_independent",
            "baseline_overfit_batch",
        )
    ]
    r = cli(
        [
            "stage=baseline",
            *FAST,
            "data=custom",
            "data._target_=zoo25.make",
            "+data.kwargs.val_scale=1.0",
            "data.image_size=16",
            "model.kwargs.width=8",
            "trainer.epochs=1",
            *off,
        ]
    )
    assert r.code == 1, r.out
    by = {c["name"]: c for c in r.json("checks.json")}
    v = by["input.split_consistency"]
    assert v["status"] == "fail" and "val: std of channel(s) [0, 1, 2]" in v["message"]
    assert "0-255" in v["message"]
    assert v["artifacts"] and (r.run_dir / v["artifacts"][0]).exists()
