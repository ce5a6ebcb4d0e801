"""The check registry: every check name that can appear in a checks.json, with its settings.

One plain dict, `CHECKS`, in the order the recipe runs them. Each entry names the check's
settings dataclass (always `enabled`, plus its thresholds with a one-line reason), the
function that computes the verdict (`module:function`, imported only when a stage runs it)
and the stage that runs it. The `checks` part of the config schema is built from this dict
(runner/config.py), so `checks.<name with _>.enabled=false` and each threshold exist for
every check and a typo fails at compose time.

Light to import (no torch): the CLI builds the schema from it before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Type


@dataclass
class CheckSettings:
    """Settings every check has."""

    # false: the check does not run and checks.json lists it as `skip`
    enabled: bool = True


@dataclass
class Check:
    name: str  # stable identifier (DESIGN.md), e.g. "init.loss"
    settings: Type[CheckSettings]
    where: str  # "module:function" that returns the Verdict
    stage: str  # the stage that runs it
    doc: str  # what it verifies, in the recipe's words

    @property
    def key(self) -> str:
        """Its key under `checks.`: the name with '.' -> '_' (init.loss -> init_loss)."""
        return self.name.replace(".", "_")


# ----------------------------------------------------------------------------- settings
# stage=baseline
@dataclass
class InputStats(CheckSettings):
    # |x| above these = unscaled pixels (0..255 fed as floats)
    max_abs_warn: float = 10.0
    max_abs_fail: float = 50.0
    # images shown in the grid of what the net is fed
    show: int = 32


@dataclass
class InitLoss(CheckSettings):
    # nats away from log C (or H(prior)) that still pass
    tolerance: float = 0.25
    # 256 examples make the estimate of the loss at init stable
    examples: int = 256


@dataclass
class InitBias(CheckSettings):
    # nats away from H(prior) after the final bias := log(prior)
    tolerance: float = 0.25


@dataclass
class GradsFlow(CheckSettings):
    # more than 1 step: zero-init residual gammas block gradients until step 1
    steps: int = 3


@dataclass
class BatchIndependence(CheckSettings):
    # a few examples are enough to expose a view/transpose that mixes the batch
    examples: int = 8


@dataclass
class OverfitBatch(CheckSettings):
    # the recipe's "a few examples"; Adam at lr until the loss <= loss_below
    examples: int = 16
    steps: int = 300
    lr: float = 1e-3
    loss_below: float = 0.05


@dataclass
class SeedDeterminism(CheckSettings):
    # two runs of this many optimiser steps from the same seed must match
    steps: int = 3


@dataclass
class InputIndependent(CheckSettings):
    # "clearly better" = this margin in val accuracy over the zero-input model
    margin: float = 0.05
    # a zero-input model only learns a constant, which takes few epochs (null = the run's)
    epochs: Optional[int] = 3


@dataclass
class LossDecreases(CheckSettings):
    # relative drop of the training loss (median of the first vs the last third of epochs)
    min_drop: float = 0.1


# issue 16: checks that catch bugs the ones above miss
@dataclass
class LabelIssues(CheckSettings):
    # out-of-sample probabilities from this many folds (each model trains on 80%)
    folds: int = 5
    # estimated fraction of wrong labels that warns: a clean set estimates < 1%, 10% flipped ~10%
    max_noise_rate: float = 0.05
    # suspects listed in checks.json and shown in the grid
    max_listed: int = 32
    # the cheap model sees grey images area-averaged to at most this many px a side
    feature_size: int = 16
    # below this skill (accuracy's share of the way from the majority rate to 1) the cheap
    # model cannot learn the labels from pixels, so its disagreement judges no single label
    min_model_skill: float = 0.5


@dataclass
class Spurious(CheckSettings):
    # size, aspect, format, colour mode: a split of the classes this clear is a shortcut
    min_separation: float = 0.95
    # brightness, contrast, sharpness, file size vary with content: only a near-perfect split
    min_separation_content: float = 0.99
    # Datalab's relative gain over the majority baseline of one property alone (digits <= 0.16)
    max_gain: float = 0.5
    # classes with fewer images take no part in the grouping: a perfect split is then chance
    min_class_examples: int = 10


@dataclass
class EvalRepeatable(CheckSettings):
    # a few validation batches show dropout/augmentation left on in eval
    examples: int = 64
    # max |logit difference|: above non-deterministic GPU kernels, far below dropout's effect
    atol: float = 1e-4


@dataclass
class PretrainedNorm(CheckSettings):
    # mean/std per channel may differ by this much (rounded published values)
    tolerance: float = 0.01
    # the size defaults to the weights' own; one set on purpose (fine-tuning at another
    # resolution is often meant) is listed unless this is false
    check_size: bool = True


@dataclass
class SplitLabels(CheckSettings):
    # the model has learned its training labels ...
    min_train_acc: float = 0.9
    # ... but val accuracy is within this of chance (max(majority rate, 1/C))
    margin: float = 0.05
    # share of a val class predicted as ONE other class that names it a relabelling
    min_share: float = 0.8


# stage=squeeze
@dataclass
class SeedSpread(CheckSettings):
    # Welch's t-test over the seed reruns: the winner's lead counts at this one-sided p-value
    alpha: float = 0.05


# ----------------------------------------------------------------------------- the registry
def _checks(*entries: Check) -> Dict[str, Check]:
    return {c.name: c for c in entries}


_D = "runner.checks.data"
CHECKS: Dict[str, Check] = _checks(
    # stage=inspect (recipe stage 1): become one with the data; thresholds are inspect.*
    Check(
        "data.corrupt", CheckSettings, f"{_D}:corrupt", "inspect", "every file opens and decodes"
    ),
    Check(
        "data.class_balance",
        CheckSettings,
        f"{_D}:class_balance",
        "inspect",
        "class counts, imbalance, train/val class mix",
    ),
    Check(
        "data.duplicates",
        CheckSettings,
        f"{_D}:duplicates",
        "inspect",
        "exact and near duplicates inside a split",
    ),
    Check(
        "data.leakage",
        CheckSettings,
        f"{_D}:leakage",
        "inspect",
        "the same or near-same image in train and val",
    ),
    Check(
        "data.outliers",
        CheckSettings,
        f"{_D}:outliers",
        "inspect",
        "images far from the rest in brightness, contrast, size, aspect or mode",
    ),
    *(
        Check(f"data.{p}", CheckSettings, f"{_D}:property_verdict", "inspect", doc)
        for p, doc in (
            ("dark", "nearly black images"),
            ("bright", "nearly white images"),
            ("blurry", "images without sharp detail"),
            ("low_information", "near two-tone or near-constant images"),
            ("odd_size", "images far smaller or larger than the rest"),
            ("odd_aspect", "images far off the usual aspect ratio"),
            ("grayscale", "grey images among colour ones"),
        )
    ),
    Check(
        "data.label_issues",
        LabelIssues,
        "runner.checks.labels:label_issues_verdict",
        "inspect",
        "training labels a cross-validated model confidently disagrees with",
    ),
    Check(
        "data.spurious",
        Spurious,
        "runner.checks.spurious:spurious",
        "inspect",
        "no image property (size, format, colour, brightness) gives the label away",
    ),
    # stage=baseline (recipe stage 2): trust earned by checks, in the recipe's order
    Check(
        "input.stats",
        InputStats,
        "runner.checks.inputs:input_stats",
        "baseline",
        "the tensors just before the net: range, mean/std, shape, an image grid",
    ),
    Check(
        "input.pretrained_norm",
        PretrainedNorm,
        "runner.checks.pretrained:pretrained_norm",
        "baseline",
        "a pretrained model gets the mean/std/size/resize it was trained with",
    ),
    Check(
        "init.loss",
        InitLoss,
        "runner.checks.init:init_loss",
        "baseline",
        "the loss at init is about log C (or the entropy of the label prior)",
    ),
    Check(
        "init.bias",
        InitBias,
        "runner.checks.init:init_bias",
        "baseline",
        "the final bias set to the log class prior",
    ),
    Check(
        "train.grads_flow",
        GradsFlow,
        "runner.checks.gradients:grads_flow",
        "baseline",
        "every trainable parameter gets a finite, non-zero gradient",
    ),
    Check(
        "train.batch_independence",
        BatchIndependence,
        "runner.checks.gradients:batch_independence",
        "baseline",
        "example i's loss has a gradient only on example i's input",
    ),
    Check(
        "baseline.overfit_batch",
        OverfitBatch,
        "runner.checks.baselines:overfit_batch",
        "baseline",
        "a few examples reach ~zero loss",
    ),
    Check(
        "seed.determinism",
        SeedDeterminism,
        "runner.checks.training:seed_determinism",
        "baseline",
        "two runs from one seed give the same losses",
    ),
    Check(
        "train.finite",
        CheckSettings,
        "runner.checks.training:train_finite",
        "train",
        "no NaN/Inf in the loss or gradients (every training stage)",
    ),
    Check(
        "baseline.input_independent",
        InputIndependent,
        "runner.checks.baselines:input_independent",
        "baseline",
        "the model beats the same model trained on zeroed inputs",
    ),
    Check(
        "eval.repeatable",
        EvalRepeatable,
        "runner.checks.evaluation:eval_repeatable",
        "baseline",
        "evaluating the same val examples twice gives the same logits",
    ),
    Check(
        "train.split_labels",
        SplitLabels,
        "runner.checks.evaluation:split_labels",
        "baseline",
        "train and val use one label mapping (val not at chance)",
    ),
    # stage=overfit (recipe stage 3); its targets are stage.params.train_loss_target/_acc_target
    Check(
        "train.loss_decreases",
        LossDecreases,
        "runner.checks.training:loss_decreases",
        "baseline",
        "the training loss falls over the run",
    ),
    Check(
        "overfit.train_fit",
        CheckSettings,
        "runner.checks.training:train_fit",
        "overfit",
        "the model fits the training set (loss near zero)",
    ),
    # stage=regularize (recipe stage 4); thresholds: stage.params.first_layer_min_corr/_kernel
    Check(
        "regularize.first_layer",
        CheckSettings,
        "runner.checks.weights:first_layer_verdict",
        "regularize",
        "the first layer's filters look like edges and blobs, not noise",
    ),
    # stage=squeeze (recipe stage 6)
    Check(
        "squeeze.ensemble",
        CheckSettings,
        "runner.checks.outcomes:ensemble",
        "squeeze",
        "the ensemble's averaged logits score at least its best member",
    ),
    Check(
        "squeeze.seed_spread",
        SeedSpread,
        "runner.checks.outcomes:seed_spread",
        "squeeze",
        "the winner beats the runner-up over seeds by more than seed noise",
    ),
    # stage=recipe
    Check(
        "recipe.gates",
        CheckSettings,
        "runner.checks.outcomes:recipe_gates",
        "recipe",
        "every stage of the recipe passed its checks",
    ),
    Check(
        "recipe.progress",
        CheckSettings,
        "runner.checks.outcomes:recipe_progress",
        "recipe",
        "no stage ends below the best stage before it by more than noise",
    ),
)


def settings(checks_cfg: Any, name: str) -> Any:
    """The settings node of a check under the `checks` config (its defaults when absent)."""
    c = check(name)
    node = checks_cfg.get(c.key) if checks_cfg is not None else None
    return node if node is not None else c.settings()


def is_enabled(checks_cfg: Any, name: str) -> bool:
    return bool(settings(checks_cfg, name).enabled)


def disabled(name: str) -> Any:
    """The verdict of a check switched off: `skip`, saying which key did it."""
    from runner.checks import skip

    return skip(name, f"checks.{check(name).key}.enabled=false")


def check(name: str) -> Check:
    """The registry entry of a check name (KeyError names the unregistered check)."""
    try:
        return CHECKS[name]
    except KeyError:
        raise KeyError(f"check {name!r} is not in runner/checks/registry.py CHECKS") from None
