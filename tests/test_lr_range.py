"""train.lr_range: the lr range test as a pure check, in stage=overfit, from Python and the shell."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch
from conftest import FAST
from torch import nn

from runner.checks.lr_range import RULE, lr_range, lr_schedule, suggest, sweep

ON = ["checks.train_lr_range.enabled=true"]


def _blobs(n=256, d=8, classes=4, seed=0):
    """Four Gaussian blobs in 8-D: a linear model learns them, Adam's usual lrs work."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 2
    y = torch.arange(n) % classes
    x = centres[y] + torch.randn(n, d, generator=g)
    return x, y


def _batches(x, y, bs=32):
    return lambda k: [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)]


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def _adam(m):
    return torch.optim.Adam(m.parameters(), lr=3e-4)


def _bytes(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_schedule_is_exponential():
    lrs = lr_schedule(1e-7, 10.0, 9)
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(10.0)
    assert all(b / a == pytest.approx(10.0) for a, b in zip(lrs, lrs[1:]))


def test_suggestion_lands_in_a_sane_range_and_says_its_rule():
    x, y = _blobs()
    v = lr_range(_mlp(), _adam, _batches(x, y), 3e-4, steps=100)
    d = v.details
    assert v.status in ("pass", "warn"), v.message
    assert 1e-4 <= d["suggestion"] <= 1e-1, d["suggestion"]
    assert d["rule"] == RULE and RULE in v.message
    assert d["valley"] == pytest.approx(d["min_loss_lr"] / 10)
    assert len(d["lrs"]) == len(d["losses"]) == d["steps"] <= 100
    assert "curve" in v.figures


@pytest.mark.parametrize("lr,side", [(1e-6, "below"), (5.0, "above")])
def test_a_far_off_lr_warns_and_names_the_suggestion(lr, side):
    x, y = _blobs()
    v = lr_range(_mlp(), _adam, _batches(x, y), lr, steps=100)
    assert v.status == "warn", v.message
    s = v.details["suggestion"]
    assert f"optim.lr={lr:g}" in v.message and side in v.message
    assert f"set optim.lr={s:.2g}" in v.message and RULE in v.message


def test_the_runs_weights_and_optimiser_are_untouched():
    x, y = _blobs()
    model = _mlp()
    opt = _adam(model)
    loss = nn.functional.cross_entropy(model(x[:32]), y[:32])
    loss.backward()
    opt.step()  # an optimiser with state (Adam's moments)
    before = _bytes(model.state_dict()), _bytes(opt.state_dict())
    lr_range(model, _adam, _batches(x, y), 3e-4, steps=60)
    assert (_bytes(model.state_dict()), _bytes(opt.state_dict())) == before


def test_a_short_epoch_is_cycled():
    x, y = _blobs(n=64)
    s = sweep(_mlp(), _adam, _batches(x, y), steps=30, end_lr=1e-3)  # 2 batches an epoch
    assert len(s.lrs) == 30


class _NanAfter(nn.Module):
    """Cross-entropy that turns NaN after `k` calls (a blow-up at high lr)."""

    def __init__(self, k):
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, logits, y):
        self.calls += 1
        loss = nn.functional.cross_entropy(logits, y)
        return loss * math.nan if self.calls > self.k else loss


def test_non_finite_losses_end_the_sweep_without_crashing():
    x, y = _blobs()
    v = lr_range(_mlp(), _adam, _batches(x, y), 3e-4, loss_fn=_NanAfter(70), steps=100)
    d = v.details
    assert d["steps"] == 71 and "non-finite" in d["stopped"]
    assert d["losses"][-1] is None and all(v is not None for v in d["losses"][:-1])
    assert v.status in ("pass", "warn", "skip")
    v.to_dict()  # serialisable


def test_a_flat_curve_is_a_skip_that_says_so():
    x, y = _blobs()
    frozen = _mlp()
    for p in frozen.parameters():
        p.requires_grad_(False)
    extra = nn.Parameter(torch.zeros(1))  # the optimiser needs a parameter; it changes nothing
    v = lr_range(
        frozen, lambda m: torch.optim.Adam([extra]), _batches(x, y), 3e-4, loss_fn=_Frozen()
    )
    assert v.status == "skip" and "no descent" in v.message and "flat or noisy" in v.message
    assert (
        suggest(sweep(frozen, lambda m: torch.optim.Adam([extra]), _batches(x, y), _Frozen(), 30))
        is None
    )


class _Frozen(nn.Module):
    """A loss with a gradient (so backward runs) whose value never moves."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, logits, y):
        return nn.functional.cross_entropy(logits, y) * self.w


def test_digits_tiny_cnn_suggestion_from_python():
    import runner
    import runner.api

    assert runner.lr_range is runner.api.lr_range
    v = runner.lr_range(["data=digits", "model=tiny_cnn", "trainer.threads=1", *ON])
    assert 1e-4 <= v.details["suggestion"] <= 1e-1, v.message
    assert v.status in ("pass", "warn") and v.seconds is not None


def test_overfit_run_lists_the_check_with_its_figure_and_trains_as_without_it(cli):
    # one epoch fits nothing: overfit.train_fit is not what this test is about
    args = FAST + [
        "stage=overfit",
        "model=tiny_cnn",
        "trainer.epochs=1",
        "checks.overfit_train_fit.enabled=false",
    ]
    on = cli(args + ON)
    assert on.code == 0, on.out
    v = next(c for c in on.json("checks.json") if c["name"] == "train.lr_range")
    assert v["status"] in ("pass", "warn"), v
    assert v["details"]["rule"] == RULE
    fig = [a for a in v["artifacts"] if a.startswith("plots/")]
    assert fig and all((on.run_dir / a).is_file() for a in fig)
    off = cli(args)  # FAST switches it off
    assert off.code == 0, off.out
    skip = next(
        c for c in off.json("checks.json", off.run_dirs[-1]) if c["name"] == "train.lr_range"
    )
    assert skip["status"] == "skip"
    # the run's own training is unaffected: the same losses with and without the test
    losses = lambda d: [  # noqa: E731
        (r["train_loss"], r["val_loss"]) for r in csv.DictReader((d / "metrics.csv").open())
    ]
    assert losses(on.run_dir) == losses(off.run_dirs[-1])


def test_the_command_prints_the_suggestion_and_writes_the_plot(cli, tmp_path):
    r = cli(["lr-range", "--plot", "lr.png", *FAST, *ON])
    assert r.code == 0, r.out
    assert "train.lr_range:" in r.out and "suggested optim.lr=" in r.out, r.out
    assert (tmp_path / "lr.png").is_file()
    bad = cli(["lr-range", *FAST, "model=no_such_model"])
    assert bad.code == 2, bad.out
