"""The baseline stage's checks on a zoo of deliberately broken models and data.

Each bug class the recipe names must be caught by the check meant for it (exact check,
exact status), and clean controls (a small CNN, timm's BatchNorm ResNet, timm's ViT) must
pass every check: no false alarms. Known numbers where there are any (init loss ~ log C).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from runner.checks.baselines import input_independent, majority_accuracy, overfit_batch
from runner.checks.gradients import batch_independence, grads_flow
from runner.checks.init import expected_init_loss, init_bias, init_loss, prior_entropy
from runner.checks.inputs import input_stats
from runner.checks.training import loss_decreases, seed_determinism, train_finite
from runner.data import TensorSplit, synthetic_images
from runner.errors import NonFiniteLoss
from runner.loop import fit
from runner.models import TinyCNN

C = 4  # classes of the synthetic data: a bright square whose grid cell is the class
SIZE = 16
MEAN, STD = (0.4,) * 3, (0.25,) * 3


def normalise(x8: torch.Tensor) -> torch.Tensor:
    return (x8.float() / 255 - MEAN[0]) / STD[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from 2 threads, and on a shared CPU OpenMP's spinning threads
    make these tests ~10x slower; one thread keeps the file at seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def batch():
    """64 clean, normalised synthetic images (balanced classes) and their labels."""
    x8, y = synthetic_images(64, C, SIZE, 3, 0.3, seed=0)
    return normalise(x8), y


@pytest.fixture(scope="module")
def prior():
    return torch.full((C,), 1.0 / C)


# ----------------------------------------------------------------------------- the zoo
def small_cnn():
    return TinyCNN(num_classes=C, in_chans=3, width=8)


def timm_resnet():
    import timm

    return timm.create_model("test_resnet", num_classes=C, in_chans=3)


def timm_vit():
    import timm

    return timm.create_model("test_vit", num_classes=C, in_chans=3, img_size=SIZE, patch_size=4)


CLEAN = {"small_cnn": small_cnn, "timm_test_resnet": timm_resnet, "timm_test_vit": timm_vit}


class BatchMixer(TinyCNN):
    """Flattens features with a reshape that runs across the batch dimension (a classic bug)."""

    def forward(self, x):
        h = self.features(x).flatten(1)
        h = h.reshape(h.shape[1], h.shape[0]).t()  # right shape, wrong memory order
        return self.fc(h)


class OverScaled(TinyCNN):
    """Final layer initialised 100x too large: confident nonsense at init."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        with torch.no_grad():
            self.fc.weight.mul_(100.0)


class DeadBranch(TinyCNN):
    """A second branch whose output is detached: it never gets a gradient."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.branch = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, C),
        )

    def forward(self, x):
        return super().forward(x) + self.branch(x).detach()


class UnusedParameter(TinyCNN):
    """One stray tensor never used in forward: a few parameters, not a whole branch."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.temperature = nn.Parameter(torch.ones(1))


class SoftmaxOutputs(TinyCNN):
    """Returns probabilities, then CrossEntropyLoss applies its own softmax on top."""

    def forward(self, x):
        return super().forward(x).softmax(1)


class NaNLayer(TinyCNN):
    """log of a negative number inside the net."""

    def forward(self, x):
        return self.fc(torch.log(self.features(x).flatten(1) - 1e3))


class ConvHead(nn.Module):
    """Classifier is a 1x1 conv + pooling: no final Linear to set a bias on."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, C, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


def make(cls):
    torch.manual_seed(0)
    if issubclass(cls, TinyCNN):
        return cls(num_classes=C, in_chans=3, width=8)
    return cls()


# ----------------------------------------------------------------------------- clean controls
@pytest.mark.parametrize("name", list(CLEAN))
def test_clean_models_pass_every_model_check(name, batch, prior):
    x, y = batch
    torch.manual_seed(0)
    model = CLEAN[name]()
    verdicts = [
        init_loss(model, x, y, prior),
        init_bias(model, x, y, prior),
        grads_flow(model, x[:32], y[:32]),
        batch_independence(model, x[:8]),
        overfit_batch(model, x[:16], y[:16]),
    ]
    assert {v.name: v.status for v in verdicts} == {
        "init.loss": "pass",
        "init.bias": "pass",
        "train.grads_flow": "pass",
        "train.batch_independence": "pass",
        "baseline.overfit_batch": "pass",
    }, [(v.name, v.message) for v in verdicts]


def test_init_loss_is_log_c_for_balanced_classes(batch, prior):
    x, y = batch
    v = init_loss(make(TinyCNN), x, y, prior)
    assert v.status == "pass"
    assert v.value == pytest.approx(math.log(C), abs=0.05)
    assert v.expected == "1.39 +/- 0.25"
    # 10 balanced classes: the recipe's own number, -log(1/10) = 2.303
    assert expected_init_loss(torch.full((10,), 0.1)) == pytest.approx((math.log(10), math.log(10)))
    torch.manual_seed(0)
    ten = TinyCNN(num_classes=10, in_chans=3, width=8)
    v10 = init_loss(ten, x, torch.arange(len(x)) % 10, torch.full((10,), 0.1))
    assert v10.status == "pass" and v10.value == pytest.approx(math.log(10), abs=0.05)


def test_prior_entropy_known_numbers():
    assert prior_entropy(torch.tensor([0.5, 0.5])) == pytest.approx(math.log(2))
    assert prior_entropy(torch.tensor([1.0, 0.0])) == pytest.approx(0.0)
    p = torch.tensor([0.7, 0.1, 0.1, 0.1])
    assert prior_entropy(p) == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.1)))


def test_checks_leave_the_model_untouched(batch, prior):
    x, y = batch
    model = timm_resnet()  # BatchNorm: train-mode forwards would move running stats
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    init_loss(model, x, y, prior)
    grads_flow(model, x[:16], y[:16])
    batch_independence(model, x[:8])
    overfit_batch(model, x[:16], y[:16], steps=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and not any(m.training for m in model.modules())
    assert torch.equal(rng, torch.get_rng_state())


# ----------------------------------------------------------------------------- broken cases
class TransposeMixer(TinyCNN):
    """Swaps batch and channel axes, then views the result back to the input shape."""

    def forward(self, x):
        return super().forward(x.transpose(0, 1).reshape(x.shape))


@pytest.mark.parametrize("cls", [BatchMixer, TransposeMixer])
def test_batch_mixing_fails_batch_independence(batch, cls):
    x, _ = batch
    v = batch_independence(make(cls), x[:8])
    assert v.status == "fail"
    assert "mixes information across the batch" in v.message


def test_batch_independence_sees_through_softmax_outputs(batch):
    # the outputs of a softmax sum to 1 whatever the input: backprop of a plain sum is zero
    x, _ = batch
    assert batch_independence(make(SoftmaxOutputs), x[:8]).status == "pass"


def test_batch_independence_runs_batchnorm_in_eval_and_says_so(batch):
    x, _ = batch
    v = batch_independence(timm_resnet(), x[:8])
    assert v.status == "pass"
    assert "BatchNorm layer(s) in eval mode" in v.message
    # why: in plain train mode BatchNorm's batch statistics couple every example
    model = timm_resnet().train()
    xi = x[:8].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xi)[0].sum(), xi)
    assert float(g[1:].abs().max()) > 0


def test_prediction_evidence_figures():
    from runner.checks.predictions import (
        confusion,
        confusion_figure,
        fixed_examples,
        prediction_dynamics,
        top_losses,
    )

    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = torch.eye(3)[torch.tensor([0, 1, 1, 0, 2, 2])] * 4
    cm = confusion(logits, targets, 3)
    assert cm.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    idx = fixed_examples(targets, 3, k=4)
    assert idx == [0, 1, 2, 3]  # one per class first, then round again
    top, losses = top_losses(logits, targets, k=2)
    assert sorted(top) == [2, 4] and losses[0] == pytest.approx(losses[1])
    probs = [logits[idx].softmax(1), (2 * logits[idx]).softmax(1)]
    assert prediction_dynamics([1, 2], probs, targets, idx) is not None
    assert confusion_figure(cm, ["a", "b", "c"]) is not None


def test_over_scaled_final_layer_fails_init_loss(batch, prior):
    x, y = batch
    v = init_loss(make(OverScaled), x, y, prior)
    assert v.status == "fail"
    assert v.value > math.log(C) + 1
    assert "over-confident" in v.message
    # setting the bias cannot rescue it: the logits are dominated by the weights
    assert init_bias(make(OverScaled), x, y, prior).status == "fail"


@pytest.mark.parametrize("scale, status", [(1, "pass"), (30, "warn"), (100, "fail")])
def test_init_loss_grades_how_over_confident_the_init_is(batch, prior, scale, status):
    # warn: moderately over-confident heads (timm's EfficientNet/MobileNet start ~1-1.5 nats
    # above log C); fail: beyond twice the uninformed loss
    x, y = batch
    model = make(TinyCNN)
    with torch.no_grad():
        model.fc.weight.mul_(scale)
    assert init_loss(model, x, y, prior).status == status


def test_init_bias_moves_the_loss_to_the_prior_entropy():
    p = torch.tensor([0.7, 0.1, 0.1, 0.1])
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(p, 512, replacement=True, generator=g)
    x8, _ = synthetic_images(512, C, SIZE, 3, 0.3, seed=1)
    model = make(TinyCNN)
    v = init_bias(model, normalise(x8), y, p)
    assert v.status == "pass", v.message
    assert v.details["loss_before"] == pytest.approx(math.log(C), abs=0.1)
    assert v.value == pytest.approx(prior_entropy(p), abs=0.1)
    assert model.fc.bias.detach() == pytest.approx(p.log(), abs=1e-6)


def test_init_bias_skips_without_a_final_linear(batch, prior):
    x, y = batch
    v = init_bias(make(ConvHead), x, y, prior)
    assert v.status == "skip"
    assert "no final nn.Linear" in v.message


def test_detached_branch_fails_grads_flow_naming_it(batch):
    x, y = batch
    v = grads_flow(make(DeadBranch), x[:32], y[:32])
    assert v.status == "fail"
    assert v.details["dead_modules"] == ["branch"]
    assert "branch.0.weight: no gradient" in v.message


def test_one_stray_parameter_warns_grads_flow(batch):
    x, y = batch
    v = grads_flow(make(UnusedParameter), x[:32], y[:32])
    assert v.status == "warn"
    assert "temperature" in v.message


def test_grads_flow_needs_more_than_one_step_for_zero_init_residuals(batch):
    # timm ResNets zero-init the last BN gamma of each block: the branch's grads are exactly
    # zero until the first update. One step would be a false alarm; the default (3) is not.
    x, y = batch
    assert grads_flow(timm_resnet(), x[:32], y[:32], steps=1).status == "fail"
    assert grads_flow(timm_resnet(), x[:32], y[:32]).status == "pass"


def test_frozen_model_fails_grads_flow_and_overfit(batch):
    x, y = batch
    model = make(TinyCNN).requires_grad_(False)
    assert grads_flow(model, x[:16], y[:16]).status == "fail"
    assert overfit_batch(model, x[:16], y[:16]).status == "fail"


def test_parameter_missing_from_the_optimiser_is_named(batch):
    x, y = batch
    v = grads_flow(
        make(TinyCNN),
        x[:16],
        y[:16],
        make_optimizer=lambda m: torch.optim.Adam(m.features.parameters(), lr=1e-3),
    )
    assert v.status == "fail"  # the whole fc module never moves
    assert "fc.weight: unchanged after the optimiser step" in v.message


def test_softmax_outputs_fail_overfit_batch(batch):
    x, y = batch
    v = overfit_batch(make(SoftmaxOutputs), x[:16], y[:16], steps=150)
    assert v.status == "fail"
    assert v.value > 0.5  # the loss floor of CE on probabilities: far from zero
    assert "probabilities" in v.message
    assert set(v.figures) == {"loss"}


def test_overfit_batch_reaches_zero_loss_and_plots(batch):
    x, y = batch
    v = overfit_batch(make(TinyCNN), x[:16], y[:16])
    assert v.status == "pass"
    assert v.details["final_acc"] == 1.0 and v.value <= 0.05
    assert v.details["steps"] < 300  # stops as soon as it gets there


def test_nan_layer_fails_train_finite_and_grads_flow(batch):
    x, y = batch
    x8 = ((x * STD[0] + MEAN[0]).clamp(0, 1) * 255).round().to(torch.uint8)
    split = TensorSplit(x8, y, MEAN, STD)
    loader = split.loader(16, True, 0, torch.device("cpu"))
    model = make(NaNLayer)
    stopped = None
    try:
        for _ in fit(
            model,
            torch.optim.Adam(model.parameters()),
            loader,
            loader,
            epochs=1,
            device=torch.device("cpu"),
        ):
            pass
    except NonFiniteLoss as e:
        stopped = e
    v = train_finite(stopped, 0)
    assert v.status == "fail" and "epoch 1, step 1" in v.value
    assert train_finite(None, 10).status == "pass"
    assert grads_flow(make(NaNLayer), x[:16], y[:16]).status == "fail"


class UnseededNoise(TinyCNN):
    """Draws its noise from a generator nobody seeds (e.g. seeded from the clock)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.gen = torch.Generator()
        self.gen.seed()  # from the OS: different in every build of the model

    def forward(self, x):
        return super().forward(x + 0.1 * torch.randn(x.shape, generator=self.gen))


@pytest.mark.parametrize("cls, status", [(TinyCNN, "pass"), (UnseededNoise, "fail")])
def test_seed_determinism(batch, cls, status):
    x, y = batch
    batches = [(x[:16], y[:16]), (x[16:32], y[16:32])]
    v = seed_determinism(
        lambda: cls(num_classes=C, in_chans=3, width=8),
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
        batches,
        seed=0,
    )
    assert v.status == status, v.message


# ----------------------------------------------------------------------------- inputs
def test_input_stats_pass_on_normalised_inputs(batch):
    x, y = batch
    v = input_stats(x, y, MEAN, STD, [f"c{k}" for k in range(C)])
    assert v.status == "pass", v.message
    ch = v.details["channels"][0]
    assert ch["min"] == pytest.approx(float(x[:, 0].min()))
    assert ch["max"] == pytest.approx(float(x[:, 0].max()))
    assert set(v.figures) == {"grid"}


@pytest.mark.parametrize(
    "broken, status, words",
    [
        ("unscaled", "fail", "unscaled"),
        ("constant", "fail", "constant"),
        ("nan", "fail", "NaN"),
        ("large", "warn", "check scaling"),
    ],
)
def test_input_stats_catches_bad_inputs(batch, broken, status, words):
    x, y = batch
    raw = (x * STD[0] + MEAN[0]).clamp(0, 1)
    bad = {
        "unscaled": raw * 255.0,  # pixels never divided by 255, nor normalised
        "constant": torch.zeros_like(x),
        "nan": x.clone().index_put_((torch.tensor([3]),), torch.tensor(float("nan"))),
        "large": x * 5.0,
    }[broken]
    v = input_stats(bad, y, MEAN, STD)
    assert v.status == status, v.message
    assert words in v.message


# ----------------------------------------------------------------------------- baselines
def _train_eval(model, train, val, zero_inputs=False, epochs=6):
    cpu = torch.device("cpu")
    tl = train.loader(32, True, 0, cpu, zero_inputs=zero_inputs)
    vl = val.loader(64, False, 0, cpu, zero_inputs=zero_inputs)
    rec = None
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for rec in fit(model, opt, tl, vl, epochs=epochs, device=cpu):  # noqa: B007 (the last one)
        pass
    return rec


@pytest.mark.parametrize("labels, status", [("real", "pass"), ("shuffled", "fail")])
def test_input_independent_catches_labels_unrelated_to_images(labels, status):
    x8, y = synthetic_images(384, C, SIZE, 3, 0.3, seed=2)
    if labels == "shuffled":  # every image keeps a label, but not its own
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    train = TensorSplit(x8[:256], y[:256], MEAN, STD)
    val = TensorSplit(x8[256:], y[256:], MEAN, STD)
    real = _train_eval(make(TinyCNN), train, val)
    zero = _train_eval(make(TinyCNN), train, val, zero_inputs=True, epochs=2)
    majority = majority_accuracy(train.labels, val.labels, C)
    v = input_independent(
        real.val_acc, real.val_loss, zero.val_acc, zero.val_loss, majority, human_acc=0.99
    )
    assert v.status == status, v.message
    assert "human 99.0%" in v.message and set(v.figures) == {"bars"}


def test_majority_accuracy_known_numbers():
    assert majority_accuracy(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1, 1]), 2) == 0.25


def test_input_independent_bar_is_at_least_the_majority_class():
    # a zero-input run that has not converged yet must not make a weak model look good
    v = input_independent(0.62, 1.0, 0.30, 1.3, majority_acc=0.60)
    assert v.status == "fail"
    assert input_independent(0.90, 0.3, 0.30, 1.3, majority_acc=0.60).status == "pass"


# ----------------------------------------------------------------------------- loss curve
@pytest.mark.parametrize(
    "losses, status",
    [
        ([2.3, 1.9, 1.5, 1.2, 1.0, 0.8], "pass"),
        ([2.3, 1.6, 1.9, 1.2, 1.4, 0.9, 1.0], "pass"),  # noisy, but going down
        ([2.3, 2.29, 2.31, 2.28, 2.3, 2.27], "warn"),  # barely moves
        ([2.3, 2.3, 2.4, 2.5, 2.9, 3.5], "fail"),  # diverging
        ([1.0, 0.2, 5.0, 6.0, 7.0, 8.0], "fail"),  # a good start is not enough
    ],
)
def test_loss_decreases_robust_to_noise(losses, status):
    assert loss_decreases(losses).status == status


def test_loss_decreases_uses_init_loss_and_skips_when_too_short():
    assert loss_decreases([0.5], initial=math.log(10)).status == "pass"
    assert loss_decreases([0.5]).status == "skip"
    assert loss_decreases([float("nan"), float("nan")]).status == "skip"
