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
# stage=inspect: the thresholds of the data checks (runner/checks/data.py); the evidence the
# report shows (how many images, thumbnails) is stage=inspect's own (stage.params)
@dataclass
class ClassBalance(CheckSettings):
    # warn when the largest train class has this many times the smallest's images: beyond
    # ~10:1 accuracy mostly measures the majority class
    imbalance_ratio: float = 10.0
    # warn when val's (or test's) class mix differs from train's by this total variation
    split_shift_tv: float = 0.2


@dataclass
class Duplicates(CheckSettings):
    """Near-duplicate matching; data.leakage matches across splits with these same settings."""

    # perceptual hashes (64 bits) within this many bits are candidates: a JPEG re-encode
    # moves <= 4 bits, a 1-px shift of a 64 px photo <= 10 (p95), other photos ~32
    near_hash_distance: int = 10
    # ... confirmed when their 32x32 band-limited grey images (data.match_image), aligned by
    # the best small shift/zoom, differ by at most this mean |a-b| (0..255) (and by a fraction
    # of their rms gradient, see data.NEAR_RELATIVE): re-encodes, 1-px shifts and 2-4% crops
    # of real-photo crops leave a median 0.6 (max 2.4, benchmarks/bench_data.py); digits'
    # closest different candidates stay above 6.8
    near_thumb_distance: float = 5.0
    # ... and in a crowd sharing a hash band (thousands of blank images) each image is compared
    # with this many neighbours in thumbnail brightness, not all: bounds the work at N x this
    near_window: int = 64


@dataclass
class LeakageAugmented(CheckSettings):
    """Flipped/rotated copies across splits (data.augmented_pairs): each later-split image is
    undone by every flip and 90-degree rotation and matched as data.leakage matches."""

    # hash candidates and confirmation as checks.data_duplicates' near_* (the same measures):
    # on all 1797 digits at 16 px (a mirrored 2 beside 5s, 6s beside 9s turned round) nothing
    # matched, 40 planted flips/rotations all did; on bench_data.py's 10k photo crops and
    # textures 0 false alarms, 95-100% of the planted copies found
    augmented_hash_distance: int = 10
    augmented_thumb_distance: float = 5.0
    # ... and the undone copy must be this much closer than the two images as they are: an
    # image that equals its own mirror matches a copy of itself under a flip too, and that
    # copy is data.leakage's
    augmented_margin: float = 0.5


@dataclass
class Outliers(CheckSettings):
    # robust z-score (median/MAD) of brightness, log contrast, log area or log aspect beyond
    # this; 5 MADs is rare in real data, so what stands out is worth a look
    outlier_z: float = 5.0
    # a mode (RGB, L, RGBA, P, ...) held by fewer than this fraction of images
    rare_mode_fraction: float = 0.01


@dataclass
class Dark(CheckSettings):
    # 99th-percentile brightness below this (0..255): hardly a pixel above 12% grey
    dark_max: float = 32.0


@dataclass
class Bright(CheckSettings):
    # 1st-percentile brightness above this: hardly a pixel below 87% grey
    bright_min: float = 223.0


@dataclass
class Blurry(CheckSettings):
    # rms Laplacian / rms gradient below this (at stage.params.analysis_size, JPEG block seams
    # left out, the image's own noise floor taken off: runner/checks/data.py sharpness).
    # Digits at 16 px score 0.59-1.21 (none flagged); at 32 px, 4x upsampled and so blurred by
    # construction, 0.50-0.94 (2.1% flagged); on benchmarks/bench_data.py's 64 px photo crops
    # this threshold flags 85-93% of the blurred JPEGs (radius 2.5-4) and 0.08-0.13% of the
    # clean ones
    blurry_max: float = 0.55
    # ... or, where that ratio is noise (a detailed texture blurred near flat), the full- over
    # half-scale rms gradient (data.falloff_sharpness: 0.5 for a strong blur, ~1 for natural
    # texture) below this: on bench_data.py's generated textures blurred by radius 3 / 4 / 5,
    # found 74% / 80% / 46% -> 94% / 95% / 54%; clean flagged 0.04% -> 0.07% (10k images)
    blurry_falloff_max: float = 0.65


@dataclass
class LowInformation(CheckSettings):
    # grey-level entropy below this many bits (a near two-tone image) ...
    entropy_min: float = 1.0
    # ... or brightness std below this (0..255): a near-constant image
    low_contrast_max: float = 2.0


@dataclass
class OddSize(CheckSettings):
    # side (sqrt of area) this many times smaller or larger than the median image's
    odd_size_factor: float = 3.0


@dataclass
class OddAspect(CheckSettings):
    # width/height this many times off the median aspect ratio
    odd_aspect_factor: float = 2.0


@dataclass
class Grayscale(CheckSettings):
    # mean |R-G|+|G-B| below this counts as grey (flagged only among colour images)
    grayscale_tolerance: float = 1.0


# stage=baseline
@dataclass
class InputStats(CheckSettings):
    # |x| above these = unscaled pixels (0..255 fed as floats)
    max_abs_warn: float = 10.0
    max_abs_fail: float = 50.0
    # images shown in the grid of what the net is fed
    show: int = 32


@dataclass
class SplitConsistency(CheckSettings):
    # examples read from each split (a few batches: enough for stable channel statistics)
    examples: int = 256
    # channel means of val/test this many train stds from train's warn (2x fails): clean
    # splits of digits/synthetic differ by <= 0.01, train-only RandAugment moves fed ones 0.32
    max_shift: float = 0.35
    # channel stds this many times train's (or 1/x) warn (squared fails): clean splits <= 1.01x
    max_std_ratio: float = 1.3
    # sharpness (1 - lag-1 autocorrelation) this many times train's warn (^1.8 fails): clean
    # splits differ <= 3%, digits resized to half and back score 0.63x
    max_sharpness_ratio: float = 1.25
    # the augmented batches the loop feeds vs train's eval read: augmentation moves them
    fed_max_shift: float = 1.0
    fed_max_std_ratio: float = 2.0


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


# issue 25: the label written in the pixels, augmentation that changes the label
@dataclass
class LabelInPixels(CheckSettings):
    # a region identifies a class when its nearest-centroid F1 reaches this from train to val
    # and back: a stamped tag or patch reaches ~1.0; a clean digit's best region (the 2x2 block
    # in a 0's hole) 0.92-0.94 over three splits
    min_f1: float = 0.98
    # ... and the cells that identify it cover at most this share of the image: classes told
    # apart by colour or texture are identified by nearly every cell (that is content)
    max_area: float = 0.15
    # ... counting the cells that nearly identify it (F1 >= this): colour classes reach ~0.9
    # in most cells, a stamp's neighbours stay near chance
    near_f1: float = 0.8
    # classes with fewer images in train or val take no part: a perfect split is then chance
    min_class_examples: int = 10


@dataclass
class LabelPreserving(CheckSettings):
    # a transform keeps the label while a cheap reader keeps this share of its skill (accuracy
    # over chance) on transformed held-out images: on digits +-15 deg keeps 0.77, hflip 0.29,
    # vflip 0.34, rot180 0.38, +-30 deg 0.34; colour, texture and mirror-symmetric classes ~1
    min_kept: float = 0.6
    # below this skill the cheap reader cannot read the classes: it judges no transform
    min_skill: float = 0.3
    # training examples drawn `repeats` times each to see flips the code does not declare
    draws: int = 8
    repeats: int = 4
    # unaugmented images the cheap reader learns from and is scored on, at most
    max_images: int = 2000


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
class BnStats(CheckSettings):
    # training examples compared (at least 2 batches of the run's batch size are used)
    examples: int = 64
    # mean total variation between train-mode-BN and eval-mode predictions that fails: clean
    # test_resnet/resnet10t/efficientnet on digits <= 0.06, momentum 0 or frozen BN >= 0.29
    max_tv: float = 0.25
    # ... and that warns (resnet18 after 2 digits epochs, stats lagging the weights: 0.17)
    warn_tv: float = 0.2
    # a layer's running stats this far (median, in batch stds) from its batch statistics
    # warn: clean <= 0.17, never updated 1.5-2.0
    max_mismatch: float = 0.5
    # one batch's mean this far (median, in stds) from the others' = batches too small for
    # BatchNorm: batch 32 gives <= 0.07, batch 2 0.59-0.62
    max_batch_noise: float = 0.3
    # ... which fails when the two modes differ this much too (batch 2: TV 0.12-0.38)
    small_batch_tv: float = 0.1
    # fewer optimiser steps than this and the running stats lag by construction (momentum
    # 0.1 leaves 0.9^30 = 4% of init): not judged (FAST runs of 16 steps: TV 0.13-0.14)
    min_steps: int = 30
    # a layer normalising fewer values per channel in a batch (batch x feature-map pixels)
    # fails by construction: 2 values always normalise to -1 and +1 (batch 2 on a 1x1 map);
    # a ResNet's last stage at batch 32 on 1x1 maps normalises 32
    min_values: int = 8


@dataclass
class SplitLabels(CheckSettings):
    # the model has learned its training labels ...
    min_train_acc: float = 0.9
    # ... but val accuracy is within this of chance (max(majority rate, 1/C))
    margin: float = 0.05
    # share of a val class predicted as ONE other class that names it a relabelling
    min_share: float = 0.8


@dataclass
class ClassMapping(CheckSettings):
    # training examples the trained model scores (eval transform) for its train recall: ~100
    # a class on digits, 0.2 s there (a 10th of the run's own evaluation work per epoch)
    examples: int = 1000
    # share of a split's images of one class predicted as ONE other class that names a
    # remapping: a swap or an off-by-one puts ~all there; digits' worst genuine confusion
    # of a trained model stays below 0.3
    min_share: float = 0.6
    # ... for a class the model knows on train (a weak class is weak everywhere)
    min_train_recall: float = 0.8
    # classes with fewer images in the split (or in train), or fewer images moved to the
    # other class, are not judged: 3 of 5 is chance, not a mapping
    min_examples: int = 5


# stage=overfit: its run stops once the training loss reaches train_loss_target
@dataclass
class TrainFit(CheckSettings):
    # the training loss that counts as "near zero" (the stage stops there)
    train_loss_target: float = 0.02
    # ... or the training accuracy that passes too
    train_acc_target: float = 0.999


@dataclass
class LrRange(CheckSettings):
    # optimiser steps of the exponential sweep (one training batch each, the loader cycled):
    # ~100 steps place ~12 points per decade over start_lr..end_lr; the sweep usually stops
    # at divergence before end_lr (digits: after 82-89). tiny_cnn on digits: 4.6 s on one
    # thread of 2 loaded CPU cores; resnet10t adds ~0.6x the steps of a digits overfit run
    steps: int = 100
    # the sweep's first and last lr: 1e-7 learns nothing (the flat start); by 10 Adam has
    # diverged on digits (tiny_cnn at ~0.3, resnet10t at ~1.3)
    start_lr: float = 1e-7
    end_lr: float = 10.0
    # the sweep stops once the smoothed loss exceeds this many times its minimum
    diverge: float = 4.0
    # the loss's exponential moving average (bias-corrected): 0.9 averages ~10 steps
    beta: float = 0.9
    # pass when optim.lr is within this factor of the steepest descent's lr (down to the
    # valley rule's, when lower), never above the lr of the lowest loss; warn outside
    factor: float = 10.0
    # skip (no suggestion) when the smoothed loss falls by less than this (relative)
    min_drop: float = 0.1


# stage=regularize
@dataclass
class FirstLayer(CheckSettings):
    # warns below this mean neighbour-pixel correlation of the first layer's filters
    min_corr: float = 0.1
    # ... judged only for kernels at least this wide (3x3 stems show little structure: skip)
    min_kernel: int = 5


# stage=datacurve
@dataclass
class DatacurveMoreData(CheckSettings):
    # "more data would help" when the 95% interval's lower end of the predicted gain at 2x
    # the training data is above this many accuracy points (else: the curve is flat)
    min_gain: float = 0.5


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
    # stage=inspect (recipe stage 1): become one with the data
    Check(
        "data.corrupt", CheckSettings, f"{_D}:corrupt", "inspect", "every file opens and decodes"
    ),
    Check(
        "data.class_balance",
        ClassBalance,
        f"{_D}:class_balance",
        "inspect",
        "class counts, imbalance, train/val class mix",
    ),
    Check(
        "data.duplicates",
        Duplicates,
        f"{_D}:duplicates",
        "inspect",
        "exact and near duplicates inside a split",
    ),
    Check(
        "data.leakage",
        CheckSettings,  # matched with checks.data_duplicates' near_* settings (one pass)
        f"{_D}:leakage",
        "inspect",
        "the same or near-same image in train and val",
    ),
    Check(
        "data.leakage_augmented",
        LeakageAugmented,
        f"{_D}:leakage_augmented",
        "inspect",
        "a flipped or rotated copy of a train image in val (or test)",
    ),
    Check(
        "data.outliers",
        Outliers,
        f"{_D}:outliers",
        "inspect",
        "images far from the rest in brightness, contrast, size, aspect or mode",
    ),
    *(
        Check(f"data.{p}", settings, f"{_D}:property_verdict", "inspect", doc)
        for p, settings, doc in (
            ("dark", Dark, "nearly black images"),
            ("bright", Bright, "nearly white images"),
            ("blurry", Blurry, "images without sharp detail"),
            ("low_information", LowInformation, "near two-tone or near-constant images"),
            ("odd_size", OddSize, "images far smaller or larger than the rest"),
            ("odd_aspect", OddAspect, "images far off the usual aspect ratio"),
            ("grayscale", Grayscale, "grey images among colour ones"),
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
    Check(
        "data.label_in_pixels",
        LabelInPixels,
        "runner.checks.pixels:label_in_pixels",
        "inspect",
        "no small region (tag, watermark, corner patch, border) gives the label away",
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
        "input.split_consistency",
        SplitConsistency,
        "runner.checks.consistency:split_consistency",
        "baseline",
        "val/test fed like train: same shape, scale, normalisation, channel order, sharpness",
    ),
    Check(
        "aug.label_preserving",
        LabelPreserving,
        "runner.checks.augment:label_preserving",
        "baseline",
        "the training flips/rotations keep every image in its class",
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
        "eval.bn_stats",
        BnStats,
        "runner.checks.batchnorm:bn_stats",
        "baseline",
        "BatchNorm's running stats match the training batches (train vs eval mode agree)",
    ),
    Check(
        "train.split_labels",
        SplitLabels,
        "runner.checks.evaluation:split_labels",
        "baseline",
        "train and val use one label mapping (val not at chance)",
    ),
    Check(
        "eval.class_mapping",
        ClassMapping,
        "runner.checks.evaluation:class_mapping",
        "baseline",
        "no class means another class in val/test than in train (swaps, shifted indices)",
    ),
    # stage=overfit (recipe stage 3)
    Check(
        "train.loss_decreases",
        LossDecreases,
        "runner.checks.training:loss_decreases",
        "baseline",
        "the training loss falls over the run",
    ),
    Check(
        "overfit.train_fit",
        TrainFit,
        "runner.checks.training:train_fit",
        "overfit",
        "the model fits the training set (loss near zero)",
    ),
    Check(
        "train.lr_range",
        LrRange,
        "runner.checks.lr_range:lr_range",
        "overfit",
        "an lr range test on a copy of the model: the configured lr near the suggested one",
    ),
    # stage=regularize (recipe stage 4)
    Check(
        "regularize.first_layer",
        FirstLayer,
        "runner.checks.weights:first_layer_verdict",
        "regularize",
        "the first layer's filters look like edges and blobs, not noise",
    ),
    # stage=datacurve (recipe stage 4: would more data help?)
    Check(
        "datacurve.more_data",
        DatacurveMoreData,
        "runner.checks.datacurve:more_data_verdict",
        "datacurve",
        "a learning curve's fit: more data would help (or the curve is flat)",
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
