"""Typed config schema (registered in Hydra's ConfigStore) and whole-config validation.

The schema is the one place defaults live (STYLE habit 6); YAML files under conf/ only
state what differs. Hydra rejects unknown keys and wrong types at compose time against
these dataclasses; `validate()` then gathers every semantic problem (negative lr, unknown
model, missing folder, ...) and raises one ConfigError that the CLI turns into exit 2.

This module must stay cheap to import: no torch/timm at import time (habit 11).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from runner.errors import ConfigError

DATA_KINDS = ("digits", "synthetic", "imagefolder", "torchvision", "custom")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "nadam", "radam", "lamb", "lion", "rmsprop")
SCHEDULERS = ("none", "cosine", "step", "multistep", "plateau", "poly", "tanh")
NUM_CLASSES_LIMIT = 100_000


@dataclass
class DataConfig:
    """What to train on. `kind` picks the builder in runner/data.py."""

    kind: str = "digits"
    # imagefolder: folder with train/ and val/ class folders, or one folder of classes + val_fraction
    # torchvision: where the dataset lives (downloaded there when `download` is true)
    root: Optional[str] = None
    # every image is resized to this square size before the net (digits are 8x8 upsampled)
    image_size: int = 32
    # used when the data has no split of its own (digits, one folder, torchvision w/o split)
    val_fraction: float = 0.2
    # seed of the train/val split; independent of `seed` so a split stays fixed across runs
    split_seed: int = 0
    # channels fed to the net for folders/torchvision (1 = grayscale, 3 = RGB)
    channels: int = 3
    # per-channel normalisation; null = measured on the training set (in-memory data) or
    # 0.5 per channel (streamed data)
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    # torchvision: dataset class name, e.g. CIFAR10, MNIST, FakeData
    name: Optional[str] = None
    download: bool = False
    # synthetic data: procedural images whose class is a bright square at a class-specific
    # position, plus noise (learnable in a few steps; for tests)
    num_classes: int = 10
    num_train: int = 512
    num_val: int = 256
    noise: float = 0.3
    # custom: dotted path to a callable returning (train, val) map-style datasets
    _target_: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # DataLoader workers for streamed (file/PIL) data; in-memory data needs none
    num_workers: int = 2
    # keep datasets up to this many pixels (N*C*H*W) as one uint8 tensor in memory
    in_memory_max_pixels: int = 200_000_000


@dataclass
class ModelConfig:
    """A timm model by name, or a custom `_target_` callable fn(num_classes=, in_chans=, **kwargs)."""

    name: Optional[str] = "resnet18"
    _target_: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    # local weights file for pretrained=true (no downloads here): .pth/.bin/.safetensors
    pretrained_file: Optional[str] = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0


@dataclass
class OptimConfig:
    """Passed to timm.optim.create_optimizer_v2; Adam 3e-4 is the recipe's safe default."""

    name: str = "adam"
    lr: float = 3e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: Optional[List[float]] = None
    eps: Optional[float] = None


@dataclass
class SchedConfig:
    """Passed to timm.scheduler.create_scheduler_v2, in this run's own epochs (recipe stage 3)."""

    name: str = "none"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    # step: decay every `decay_epochs` by `decay_rate`
    decay_epochs: int = 10
    decay_rate: float = 0.1
    # update the lr every step (smooth) rather than once per epoch
    step_on_epochs: bool = False


@dataclass
class AugConfig:
    """Training-time augmentation through timm (create_transform, Mixup). `none` = the recipe's start."""

    name: str = "none"
    # timm create_transform training options
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333333])
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: Optional[float] = None
    auto_augment: Optional[str] = None
    re_prob: float = 0.0
    # timm Mixup/CutMix on batches (0 = off)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 64
    # auto = cuda when available, else cpu
    device: str = "auto"
    # fp32 | bf16 | fp16 autocast (fp16 only on CUDA, with a GradScaler)
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    # torch intra-op threads; 0 = all cores of this machine
    threads: int = 0
    # clip gradient norm (0 = off): the recipe warns that clipping hides bugs, so off by default
    grad_clip: float = 0.0
    # evaluate on the *whole* validation set every this many epochs (and always at the end)
    eval_every: int = 1
    # stop early when val loss has not improved for this many evaluations (0 = off)
    early_stopping_patience: int = 0
    # cap on optimiser steps per epoch (0 = a full pass); for quick checks and tests
    max_steps_per_epoch: int = 0
    progress: bool = True


@dataclass
class ChecksConfig:
    """Sanity checks (runner/checks). `strict`: a failed check makes the exit code 1."""

    strict: bool = True
    # per-check settings live under the check's name, e.g. checks.init_loss.tolerance
    seed_determinism: Dict[str, Any] = field(default_factory=lambda: {"enabled": True, "steps": 3})
    train_finite: Dict[str, Any] = field(default_factory=lambda: {"enabled": True})
    # stage=baseline (runner/checks/*.py); the key is the check name with '.' -> '_'.
    # input.stats: |x| above warn/fail = unscaled; `show` images in the grid
    input_stats: Dict[str, Any] = field(default_factory=lambda: {
        "enabled": True, "max_abs_warn": 10.0, "max_abs_fail": 50.0, "show": 32})
    # init.loss: nats away from log C (or H(prior)); 256 examples make the estimate stable
    init_loss: Dict[str, Any] = field(default_factory=lambda: {
        "enabled": True, "tolerance": 0.25, "examples": 256})
    # init.bias: sets the final bias to log(prior) for the real run, then checks the loss
    init_bias: Dict[str, Any] = field(default_factory=lambda: {"enabled": True, "tolerance": 0.25})
    # train.grads_flow: >1 step, since zero-init residual gammas block grads until step 1
    train_grads_flow: Dict[str, Any] = field(default_factory=lambda: {"enabled": True, "steps": 3})
    # train.batch_independence: a few examples are enough to expose a batch-mixing view
    train_batch_independence: Dict[str, Any] = field(default_factory=lambda: {
        "enabled": True, "examples": 8})
    # baseline.overfit_batch: the recipe's "a few examples"; Adam at lr until loss <= loss_below
    baseline_overfit_batch: Dict[str, Any] = field(default_factory=lambda: {
        "enabled": True, "examples": 16, "steps": 300, "lr": 1e-3, "loss_below": 0.05})
    # baseline.input_independent: "clearly better" = margin in accuracy. A zero-input model can
    # only learn a constant, which takes few epochs (null = as many as the real run)
    baseline_input_independent: Dict[str, Any] = field(default_factory=lambda: {
        "enabled": True, "margin": 0.05, "epochs": 3})
    # train.loss_decreases: relative drop (median of first vs last third of epochs)
    train_loss_decreases: Dict[str, Any] = field(default_factory=lambda: {
        "enabled": True, "min_drop": 0.1})
    # report evidence (not pass/fail): prediction dynamics, confusion matrix, top-loss images
    predictions: Dict[str, Any] = field(default_factory=lambda: {
        "enabled": True, "examples": 8, "top_losses": 16})


@dataclass
class StageConfig:
    """Which procedure runs (runner/stages); stage YAMLs set this and what they change."""

    name: str = "baseline"
    # free-form settings of the stage procedure
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class InspectConfig:
    """stage=inspect (recipe stage 1, runner/stages/inspect.py): thresholds of the data checks
    (runner/checks/data.py) and how much of the evidence the report shows."""

    # pixel statistics are measured on a copy whose longer side is at most this many pixels
    # (sharpness depends on scale, so every image is judged at one scale)
    analysis_size: int = 128
    # near-duplicates: dHashes (64 bits) within this many bits are candidates ...
    near_hash_distance: int = 4
    # ... confirmed when their 16x16 grey thumbnails differ by at most this mean |a-b| (0..255):
    # a re-save or light noise moves it by ~1; two of the digits' "1"s by different writers ~4
    near_thumb_distance: float = 3.0
    # ... and in a crowd sharing a hash band (thousands of blank images) each image is compared
    # with this many neighbours in thumbnail brightness, not all: bounds the work at N x this
    near_window: int = 64
    # class_balance warns when the largest train class has this many times the smallest's
    # images: beyond ~10:1 accuracy mostly measures the majority class
    imbalance_ratio: float = 10.0
    # class_balance warns when val's class mix differs from train's by this total variation
    split_shift_tv: float = 0.2
    # outliers: robust z-score (median/MAD) of brightness, log contrast, log area or log aspect
    # beyond this; 5 MADs is rare in real data, so what stands out is worth a look
    outlier_z: float = 5.0
    # outliers: a mode (RGB, L, RGBA, P, ...) held by fewer than this fraction of images
    rare_mode_fraction: float = 0.01
    # dark: 99th-percentile brightness below this (0..255): hardly a pixel above 12% grey
    dark_max: float = 32.0
    # bright: 1st-percentile brightness above this: hardly a pixel below 87% grey
    bright_min: float = 223.0
    # blurry: std(Laplacian) / std(image) below this (at analysis_size): sharp photos ~0.2-1.5,
    # 8x8 digits upsampled to 32 px ~0.15, a photo under a Gaussian blur of 2-4 px ~0-0.1
    blurry_max: float = 0.05
    # low information: grey-level entropy below this many bits (a near two-tone image) ...
    entropy_min: float = 1.0
    # ... or brightness std below this (0..255): a near-constant image
    low_contrast_max: float = 2.0
    # odd size: side (sqrt of area) this many times smaller or larger than the median image's
    odd_size_factor: float = 3.0
    # odd aspect: width/height this many times off the median aspect ratio
    odd_aspect_factor: float = 2.0
    # grayscale: mean |R-G|+|G-B| below this counts as grey (flagged only among colour images)
    grayscale_tolerance: float = 1.0
    # images listed per check in checks.json and the report (all are in images.csv)
    max_listed: int = 50
    # report: sample images per class and split, and how many classes the grids show
    samples_per_class: int = 8
    max_classes_shown: int = 20
    # report: images per "sorted by" strip and per flag, groups of duplicates shown
    strip_length: int = 10
    max_groups_shown: int = 12
    # report thumbnails are drawn this many pixels on their longer side
    thumb_size: int = 64


@dataclass
class TuneConfig:
    """A trial of `python -m runner -m stage=tune` (runner/stages/tune.py). The Optuna sweeper
    (hydra_plugins/recipe_optuna_sweeper) sets these on each trial job; outside a sweep they
    stay null and stage=tune trains once with the current config."""

    # the trial's number in the study (its directory's name)
    trial: Optional[int] = None
    # the study's storage: sqlite:///..., a *.journal file, or any Optuna RDB URL
    storage: Optional[str] = None
    study_name: Optional[str] = None


@dataclass
class TensorboardLoggerConfig:
    """torch.utils.tensorboard SummaryWriter (runner/loggers.py); `tensorboard --logdir outputs`."""

    enabled: bool = False
    # null = <run dir>/tensorboard, so every run's events sit beside its report
    log_dir: Optional[str] = None
    # histograms of the first layer's weights every epoch: dead or exploding filters show here
    histograms: bool = True
    # images in the input grid logged once at the start (0 = none): what the net is fed
    images: int = 32


@dataclass
class MlflowLoggerConfig:
    """MLflow tracking (runner/loggers.py): config as params, epoch figures as metrics."""

    enabled: bool = False
    # null = a local SQLite store, sqlite:///<cwd>/mlruns/mlflow.db (MLflow 3 retired plain
    # file stores); any URI MLflow accepts works (http://..., databricks, sqlite:///...)
    tracking_uri: Optional[str] = None
    # null = the experiment's `name`
    experiment_name: Optional[str] = None
    # null = "<stage>/<run dir name>"
    run_name: Optional[str] = None
    # extra tags on the MLflow run
    tags: Dict[str, str] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    """Where epoch figures go besides metrics.csv (always written). `logger=[tensorboard,mlflow]`
    combines them; each conf/logger/<name>.yaml only switches its own on."""

    tensorboard: TensorboardLoggerConfig = field(default_factory=TensorboardLoggerConfig)
    mlflow: MlflowLoggerConfig = field(default_factory=MlflowLoggerConfig)
    # logger=csv: metrics.csv is the run directory contract and is always written
    csv: Dict[str, Any] = field(default_factory=lambda: {"enabled": True})


@dataclass
class RunnerConfig:
    stage: StageConfig = field(default_factory=StageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    seed: int = 0
    # false, true (latest interrupted run under outputs/), or a run directory / checkpoint path
    resume: Any = False
    # a run directory or checkpoint whose model weights initialise this run (a warm start:
    # fresh optimiser and epochs); `from=<run dir>` sets it for stage=train (runner/lineage.py)
    init_from: Optional[str] = None
    # accuracy a person gets on this data, when known (reported next to the model's)
    human_baseline: Optional[float] = None
    # experiment name (set by experiment/*.yaml); shown in reports
    name: str = "default"


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore as `runner_schema` (config.yaml extends it)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="runner_schema", node=RunnerConfig)


def _close(value: str, options, n: int = 3) -> str:
    near = difflib.get_close_matches(value, list(options), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(repr(x) for x in near)}?" if near else ""


def _choice(problems: List[str], key: str, value, allowed) -> None:
    if value not in allowed:
        problems.append(
            f"{key}={value!r} is not one of {', '.join(map(str, allowed))}{_close(str(value), allowed)}"
        )


def _positive(problems: List[str], key: str, value, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        problems.append(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def validate(cfg, original_cwd: Optional[str] = None) -> None:
    """Check the composed config; gather every problem and raise one ConfigError.

    Type and unknown-key errors are Hydra's (compose time); these are the semantic ones.
    Only light imports here except the timm model lookup, done only when a name is set.
    """
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:  # `???` in YAML: the user must give these
        raise ConfigError([f"{k} is required but not set (the YAML has ???); add {k}=..."
                           for k in missing])
    p: List[str] = []
    d, m, o, s, t, a = cfg.data, cfg.model, cfg.optim, cfg.sched, cfg.trainer, cfg.aug
    base = Path(original_cwd or os.getcwd())

    # stage
    from runner.stages import STAGES

    _choice(p, "stage.name", cfg.stage.name, sorted(STAGES))

    # data
    _choice(p, "data.kind", d.kind, DATA_KINDS)
    _positive(p, "data.image_size", d.image_size)
    if not 0.0 < d.val_fraction < 1.0:
        p.append(f"data.val_fraction={d.val_fraction!r} must be between 0 and 1 (exclusive)")
    _choice(p, "data.channels", d.channels, (1, 3))
    for key in ("mean", "std"):
        v = d[key]
        if v is not None and len(v) not in (1, d.channels):
            p.append(f"data.{key} has {len(v)} values; expected 1 or data.channels={d.channels}")
    if d.std is not None and any(x <= 0 for x in d.std):
        p.append(f"data.std={list(d.std)} must be > 0 per channel")
    _positive(p, "data.num_workers", d.num_workers, allow_zero=True)
    if d.kind == "imagefolder":
        if not d.root:
            p.append("data.root is not set; expected a folder with train/ and val/ class folders "
                     "(or one folder of class folders) for data=imagefolder")
        elif not (base / d.root).expanduser().is_dir():
            p.append(f"data.root={d.root!r} is not a folder (looked in {(base / d.root).expanduser()}); "
                     "expected train/ and val/ class folders or one folder of class folders")
    if d.kind == "torchvision":
        if not d.name:
            p.append("data.name is not set; expected a torchvision dataset class, e.g. data.name=CIFAR10")
        if not d.root:
            p.append("data.root is not set; expected the folder the torchvision dataset lives in")
    if d.kind == "custom" and not d._target_:
        p.append("data._target_ is not set; expected a dotted path to a callable returning (train, val)")
    if d.kind == "synthetic":
        _positive(p, "data.num_classes", d.num_classes)
        _positive(p, "data.num_train", d.num_train)
        _positive(p, "data.num_val", d.num_val)
        if d.num_classes > 16:
            p.append(f"data.num_classes={d.num_classes} must be <= 16 for synthetic data")

    # model
    if not m._target_ and not m.name:
        p.append("model.name is not set; expected a timm model name (e.g. resnet18) or model._target_")
    if m.pretrained_file and not (base / m.pretrained_file).expanduser().is_file():
        p.append(f"model.pretrained_file={m.pretrained_file!r} is not a file")
    if m.pretrained_file and not m.pretrained:
        p.append("model.pretrained_file is set but model.pretrained=false; set model.pretrained=true")
    for key in ("drop_rate", "drop_path_rate"):
        if not 0.0 <= m[key] < 1.0:
            p.append(f"model.{key}={m[key]!r} must be in [0, 1)")
    if m.name and not m._target_:
        problem = timm_model_problem(m.name)
        if problem:
            p.append(problem)

    # optim / sched / aug
    _choice(p, "optim.name", o.name, OPTIMIZERS)
    _positive(p, "optim.lr", o.lr)
    _positive(p, "optim.weight_decay", o.weight_decay, allow_zero=True)
    _choice(p, "sched.name", s.name, SCHEDULERS)
    _positive(p, "sched.warmup_epochs", s.warmup_epochs, allow_zero=True)
    if s.warmup_epochs >= t.epochs > 0 and s.name != "none":
        p.append(f"sched.warmup_epochs={s.warmup_epochs} must be < trainer.epochs={t.epochs}")
    if not 0.0 <= a.label_smoothing < 1.0:
        p.append(f"aug.label_smoothing={a.label_smoothing!r} must be in [0, 1)")
    _positive(p, "aug.mixup_alpha", a.mixup_alpha, allow_zero=True)
    _positive(p, "aug.cutmix_alpha", a.cutmix_alpha, allow_zero=True)
    if not 0.0 <= a.re_prob <= 1.0:
        p.append(f"aug.re_prob={a.re_prob!r} must be in [0, 1]")

    # trainer
    _positive(p, "trainer.epochs", t.epochs)
    _positive(p, "trainer.batch_size", t.batch_size)
    _choice(p, "trainer.device", t.device, DEVICES)
    _choice(p, "trainer.precision", t.precision, PRECISIONS)
    _positive(p, "trainer.threads", t.threads, allow_zero=True)
    _positive(p, "trainer.grad_clip", t.grad_clip, allow_zero=True)
    _positive(p, "trainer.eval_every", t.eval_every)
    _positive(p, "trainer.early_stopping_patience", t.early_stopping_patience, allow_zero=True)
    _positive(p, "trainer.max_steps_per_epoch", t.max_steps_per_epoch, allow_zero=True)
    if cfg.human_baseline is not None and not 0.0 <= cfg.human_baseline <= 1.0:
        p.append(f"human_baseline={cfg.human_baseline!r} must be an accuracy in [0, 1]")
    init_from = cfg.get("init_from")
    if init_from and original_cwd is not None \
            and not (Path(original_cwd) / str(init_from)).expanduser().exists():
        p.append(f"init_from={init_from!r}: no such run directory or checkpoint file "
                 f"(looked in {(Path(original_cwd) / str(init_from)).expanduser()})")
    if not isinstance(cfg.resume, (bool, str)):
        p.append(f"resume={cfg.resume!r} must be true, false or a run directory / checkpoint path")

    if p:
        raise ConfigError(p)


def timm_model_problem(name: str) -> Optional[str]:
    """A message when `name` is not a timm model (with close names), else None."""
    import timm

    if timm.is_model(name):
        return None
    near = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(x) for x in near)}?" if near else \
        "; see timm.list_models() or use model=custom with model._target_"
    return f"model.name={name!r} is not a timm model{hint}"
