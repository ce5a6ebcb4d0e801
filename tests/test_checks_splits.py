"""Issue 25's checks on planted bugs, and clean controls that must pass them.

- input.split_consistency: val (or test) fed through another pipeline than train - left
  unnormalised, scaled to 0-255, channels reordered, resized another way (blurrier) - fails;
  clean digits, clean synthetic and train-only augmentation (aug=light, aug=strong) pass.
- eval.bn_stats: BatchNorm whose running statistics never updated (momentum 0, kept in eval
  mode while training, reset after it) fails, and so do running statistics from batches of
  2; BatchNorm trained properly passes, models without BatchNorm (or with GroupNorm) skip.
- eval.class_mapping: two classes swapped in val, or a class missing from val's class list
  (the indices after it off by one), fail and are named; a clean model, genuinely
  confusable classes and a model that never learned a class pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, compose
from torch import nn

from runner.checks.batchnorm import bn_stats
from runner.checks.consistency import sharpness, split_consistency
from runner.checks.evaluation import class_mapping, confusion
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


def views(data, aug="none", n=64):
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


def test_split_consistency_judges_a_split_of_a_few_images_by_its_sampling_error(digits):
    train = digits.train.get(range(256))[0]
    for k in range(10):
        idx = torch.randperm(len(digits.val), generator=torch.Generator().manual_seed(k))[:4]
        v = split_consistency({"train": train, "val": digits.val.get(idx.tolist())[0]})
        assert v.status == "pass", v.message
        assert v.details["val"]["tolerance"]["shift"] > 0.35  # widened by 2 standard errors


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


def test_split_consistency_flags_val_resized_with_another_filter(digits):
    """val upsampled 8 -> 16 px with nearest (blocky) where train used bilinear."""
    nearest = build_data(compose(["data=digits", "data.interpolation=nearest"]).data)
    v = split_consistency(
        {"train": digits.train.get(range(256))[0], "val": nearest.val.get(range(256))[0]},
        mean=digits.mean,
        std=digits.std,
    )
    # measured: sharpness 2.47x train's (bicubic: 1.34x, a warning)
    assert v.status == "fail" and "sharper (blockier) than train" in v.message


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


# ----------------------------------------------------------------------------- eval.bn_stats
def bn_cnn(norm=nn.BatchNorm2d, momentum=0.1, pool=2) -> nn.Module:
    """conv-BN-relu-pool-conv-pool-BN-relu-linear; pool=1 puts the second BN on 1x1 maps (a
    ResNet's last stage at 16 px), where a batch of 2 gives it 2 values per channel."""
    torch.manual_seed(0)
    kw = {"momentum": momentum} if norm is nn.BatchNorm2d else {}

    def n(c):
        return norm(c, **kw) if norm is nn.BatchNorm2d else nn.GroupNorm(4, c)

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        n(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(pool),
        n(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.3),  # dropout differs between modes too: the check must not blame BN
        nn.Linear(16 * pool * pool, 10),
    )


@pytest.fixture(scope="module")
def digit_batches(digits):
    """Training examples of digits as the loop feeds them (normalised, 16 px)."""
    return take(digits.train.loader(64, True, 0, CPU, train=True), 512), torch.cat(
        [yb for _, yb in digits.train.loader(64, True, 0, CPU, train=True).epoch(0)]
    )[:512]


def fit(model, x, y, batch_size=32, steps=60, frozen=False, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    if frozen:  # the bug: BatchNorm kept in eval mode while the model trains
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    for i in range(steps):
        j = (i * batch_size) % (len(y) - batch_size)
        loss = F.cross_entropy(model(x[j : j + batch_size]), y[j : j + batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_bn_stats_passes_batchnorm_trained_properly_and_leaves_no_trace(digit_batches):
    x, y = digit_batches
    model = fit(bn_cnn(), x, y, lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    v = bn_stats(model, x[:64], y[:64], 32)
    assert v.status == "pass", v.message
    # measured: TV 0.01-0.06 on clean models; per-layer distance <= 0.17
    assert v.value < 0.1 and v.details["layers"] == 2
    assert model.training and all(torch.equal(before[k], t) for k, t in model.state_dict().items())


@pytest.mark.parametrize("bug", ["momentum0", "frozen", "reset"])
def test_bn_stats_fails_running_stats_that_never_updated(digit_batches, bug):
    x, y = digit_batches
    model = fit(bn_cnn(momentum=0.0 if bug == "momentum0" else 0.1), x, y, frozen=bug == "frozen")
    if bug == "reset":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
    v = bn_stats(model, x[:64], y[:64], 32)
    assert v.status == "fail", v.message
    assert v.details["never_updated"] == ["1", "6"]
    assert "never moved from init" in v.message and "momentum" in v.message
    assert "layers" in v.figures


def test_bn_stats_fails_statistics_from_batches_of_two(digit_batches):
    x, y = digit_batches
    model = fit(bn_cnn(pool=1), x, y, batch_size=2, steps=300, lr=1e-3)
    v = bn_stats(model, x[:64], y[:64], 2)
    assert v.status == "fail", v.message
    assert "too small for BatchNorm" in v.message and "GroupNorm" in v.message


def test_bn_stats_skips_models_without_batchnorm(digit_batches):
    x, y = digit_batches
    from runner.models import TinyCNN

    assert bn_stats(TinyCNN(10, 1, 8), x[:8], y[:8], 4).status == "skip"
    v = bn_stats(fit(bn_cnn(norm=nn.GroupNorm), x, y, steps=5), x[:8], y[:8], 4)
    assert v.status == "skip" and "no BatchNorm" in v.message
    untracked = bn_cnn()
    untracked[1] = nn.BatchNorm2d(8, track_running_stats=False)
    untracked[6] = nn.BatchNorm2d(16, track_running_stats=False)
    assert "track_running_stats=False" in bn_stats(untracked, x[:8], y[:8], 4).message


def test_bn_stats_does_not_judge_a_run_too_short_for_its_running_stats(digit_batches):
    x, y = digit_batches
    v = bn_stats(fit(bn_cnn(), x, y, steps=6, lr=1e-2), x[:64], y[:64], 32)
    assert v.status == "pass" and "tracked only 6 batches (< 30)" in v.message
    # a tiny momentum is the bug, not a short run: judged
    slow = fit(bn_cnn(momentum=0.001), x, y, steps=60, lr=3e-3)
    assert bn_stats(slow, x[:64], y[:64], 32).status == "fail"


# ----------------------------------------------------------------------------- eval.class_mapping
@pytest.fixture(scope="module")
def digit_predictions():
    """Nearest class mean on digits' pixels (train 70%, val 30%): (train labels, train
    preds, val labels, val preds); ~90% accurate, its mistakes spread over several classes."""
    from runner.data import digits_arrays

    images, y = digits_arrays()
    x = images.reshape(len(y), -1)
    val = np.arange(len(y)) % 10 < 3
    means = np.stack([x[~val & (y == c)].mean(0) for c in range(10)])

    def predict(a):
        return ((a[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)

    return y[~val], predict(x[~val]), y[val], predict(x[val])


def test_class_mapping_passes_a_clean_model(digit_predictions):
    ytr, ptr, yva, pva = digit_predictions
    v = class_mapping(confusion(ytr, ptr, 10), {"val": confusion(yva, pva, 10)})
    assert v.status == "pass", v.message
    assert v.value < 0.2  # the worst genuine confusion of one class into another


def test_class_mapping_fails_two_classes_swapped_in_val(digit_predictions):
    ytr, ptr, yva, pva = digit_predictions
    swapped = yva.copy()
    swapped[yva == 1], swapped[yva == 7] = 7, 1
    v = class_mapping(
        confusion(ytr, ptr, 10), {"val": confusion(swapped, pva, 10)}, [f"d{k}" for k in range(10)]
    )
    assert v.status == "fail" and v.value == 2
    assert "val: 'd1' and 'd7' are swapped" in v.message
    assert "one class -> index map" in v.message
    assert v.details["val"]["mapped"]["d1"]["to"] == "d7"
    assert "confusion" in v.figures


def test_class_mapping_fails_a_class_missing_from_val_and_names_the_shift(digit_predictions):
    """val's class folders lack '3': its images are gone, and 4..9 get the indices 3..8."""
    ytr, ptr, yva, pva = digit_predictions
    keep = yva != 3
    shifted = np.where(yva[keep] > 3, yva[keep] - 1, yva[keep])
    v = class_mapping(confusion(ytr, ptr, 10), {"val": confusion(shifted, pva[keep], 10)})
    assert v.status == "fail" and v.value == 6
    assert "classes '3'..'8' are predicted as the class +1 from them" in v.message
    assert "['9'] have no images here" in v.message
    assert v.details["val"]["missing_classes"] == ["9"]


def test_class_mapping_passes_confusable_and_unlearned_classes():
    C = 4
    train = np.diag([95, 95, 95, 60]).astype(np.int64)
    train[3, 2] = 40  # class 3 is not learned on train (recall 0.6)
    train[0, 1] = train[1, 0] = 5
    val = np.diag([20, 50, 50, 15])
    val[0, 1] = 28  # genuinely confusable: 58% of class 0 goes to 1, below the 0.6 share
    val[0, 2] = 2
    val[3, 2] = 35  # 70% of class 3 goes to 2, but train never learned class 3
    v = class_mapping(train, {"val": val}, min_share=0.6)
    assert v.status == "pass", v.message
    # a test split is judged like val
    test = np.diag([30, 30, 30, 30])
    test[0, 0], test[0, 3] = 2, 28
    v = class_mapping(train, {"val": val, "test": test})
    assert v.status == "fail" and "test: '0' is predicted as '3' in 93%" in v.message
    assert class_mapping(np.zeros((C, C)), {"val": val}).status == "skip"
    # two look-alike classes the model memorised on train split ~50/50 on val: named by
    # chance in <= 1% of runs (Wilson's 99% bound: measured 0.3% at 40 images a class)
    rng = np.random.default_rng(0)
    named = 0
    for k in rng.binomial(40, 0.5, size=1000):
        alike = np.diag([40 - k, 40, 40, 40])
        alike[0, 1] = k
        named += class_mapping(np.diag([50] * 4), {"val": alike}).status != "pass"
    assert named <= 10, named
    # 4 of a class's 5 val images to one other class is too few images to name a mapping
    few = np.diag([20, 20, 20, 1])
    few[3, 0] = 4
    assert class_mapping(np.diag([50, 50, 50, 50]), {"val": few}).status == "pass"
