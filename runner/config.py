"""Typed config schema (registered in Hydra's ConfigStore) and whole-config validation.

The schema is the one place defaults live (STYLE habit 6); YAML files under conf/ only
state what differs. Hydra rejects unknown keys and wrong types at compose time against
these dataclasses; `validate()` then gathers every semantic problem (negative lr, unknown
model, missing folder, ...) and raises one ConfigError that the CLI turns into exit 2.
Overrides: the key one sets (`override_key`) and a list of them written as a config file
(`overrides_yaml`: regularize's experiment file, the sweep's best.yaml).

This module must stay cheap to import: no torch/timm at import time (habit 11).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from runner.errors import ConfigError
from runner.stages.protocol import NoParams, keyword_fields

# what validation selects on (top-level `metric`): early stopping and best.pt, the ladder's
# kept rungs, the study's trials, squeeze's pick and the recipe's final model (runner/jobs.py
# selection_value); val_loss is minimised, the others maximised
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "val_loss")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "nadam", "radam", "lamb", "lion", "rmsprop")
# the ones torch gives a fused kernel (optim.fused)
FUSED_OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")
SCHEDULERS = ("none", "cosine", "step", "multistep", "plateau", "poly", "tanh")
ON_UNREADABLE = ("skip", "fail")
# trainer.imbalance (runner/imbalance.py SETTINGS)
IMBALANCE = ("none", "class_weights", "balanced_sampler", "auto")


@dataclass
class DataConfig:
    """What to train on. `kind` picks the builder in runner/data.py."""

    kind: str = "digits"
    # imagefolder: folder with train/ and val/ class folders, or one folder of classes + val_fraction
    # torchvision: where the dataset lives (downloaded there when `download` is true)
    root: Optional[str] = None
    # every image is resized to this square size before the net (digits are 8x8 upsampled);
    # the data YAMLs set `${pretrained:input_size,N}`: a pretrained timm model's own input
    # size (model.pretrained=true: its weights were trained at it), else N
    image_size: int = 32
    # the resize filter (timm's names: bilinear, bicubic, nearest, box, hamming, lanczos); by
    # default a pretrained timm model's own (often bicubic), else bilinear
    interpolation: str = "${pretrained:interpolation,bilinear}"
    # used when the data has no val split of its own (digits, one folder, train/ without
    # val/, torchvision: carved from its train split), stratified by class
    val_fraction: float = 0.2
    # a test split carved from the data when it has none of its own (digits, one folder,
    # torchvision without train/test), stratified; scored once on the final model, never
    # selected on. 0 = none: off by default so the splits (and results) of existing configs
    # stay as they were; an image folder's test/ and torchvision's test split need no setting
    test_fraction: float = 0.0
    # seed of the train/val split; independent of `seed` so a split stays fixed across runs
    split_seed: int = 0
    # train on a stratified fraction of the training split (1 = all of it); fractions are
    # nested (a smaller one's images are in a larger one's): stage=datacurve's points
    train_fraction: float = 1.0
    # channels fed to the net for folders/torchvision (1 = grayscale, 3 = RGB)
    channels: int = 3
    # per-channel normalisation; null = a pretrained model's own (model.pretrained=true: its
    # weights expect them), else measured on the training set (in-memory data) or ImageNet's
    # for RGB / 0.5 otherwise (streamed data); summary.json data.norm_from says which
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
    # synthetic: test images (0 = no test split)
    num_test: int = 0
    noise: float = 0.3
    # custom: dotted path to a callable returning (train, val) or (train, val, test)
    # map-style datasets
    _target_: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # DataLoader workers for streamed (file/PIL) data and augmented in-memory data; null =
    # chosen for the device (runner.data.default_workers): none on a CPU, whose cores the
    # training threads already use (2 cores, resnet10t, 64 px JPEG/PNG folder, process wall
    # time per epoch: 2 workers 1.2x and 1 worker 1.17x the time of none), up to 8 on CUDA;
    # stage=inspect (no training): one per core, up to 8
    num_workers: Optional[int] = None
    # a file that cannot be read while training: skip = left out of the epoch (named in the
    # log and the summary's unreadable_files), fail = stop the run naming it. Skip by default:
    # one bad file in a large folder should not cost a night's run; inspect lists them all
    on_unreadable: str = "skip"
    # decoding limits of image files (imagefolder, and what stage=inspect reads): a file over
    # either is unreadable like a corrupt one (named, counted, skipped or fatal per
    # on_unreadable), refused from its header before it is decoded: a 20000x20000 PNG of a
    # few KB decodes to 1.2 GB. Pixels: PIL's own decompression-bomb limit (~0.27 GB as RGB;
    # PIL refuses over twice it whatever this says); bytes: far above a training image
    max_image_pixels: int = 89_478_485
    max_image_bytes: int = 100_000_000
    # keep datasets up to this many pixels (N*C*H*W) as one uint8 tensor in memory
    in_memory_max_pixels: int = 200_000_000
    # manifest: one or more CSV / JSON / JSON-lines files of path,label[,split][,group] rows
    # (a path or a list); image paths are relative to the file that names them
    files: Optional[Any] = None
    # manifest and hf: the columns holding the image (path or image), the label (a class name
    # or index) and, when present, the split (train/val/test) and the group (patient,
    # session, camera...: with a group column every split is made by group); wds: the field
    # of a sample's json member holding its group
    path_column: str = "path"
    image_column: str = "image"
    label_column: str = "label"
    split_column: str = "split"
    group_column: str = "group"
    # hf: runner split -> the dataset's split name (train/val/test); empty = found by name
    # (train; validation, valid or val; test), val carved by val_fraction when there is none
    splits: Dict[str, str] = field(default_factory=dict)
    # wds: tar shards per split (local paths or brace patterns, e.g. data/train-{000..009}.tar)
    shards: Dict[str, Any] = field(default_factory=dict)
    # wds: false = the shards are indexed once (each member's offset) and read at random like
    # files (exact resume, the same training curves as a folder of the same images); true =
    # the train shards streamed in order through a shuffle buffer, shards split across DDP
    # ranks and loader workers (for shards too large to read at random, or twice: their
    # member headers are still indexed, no image is read before training)
    stream: bool = False
    # wds stream: samples held in the shuffle buffer while streaming the training shards
    shuffle_buffer: int = 1000
    # wds stream: stage=inspect (duplicates, leakage, label issues, every data check) reads
    # a seeded sample of this many images of each split, and says "checked on a sample of
    # N of M"
    sample_size: int = 2000


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
    # torch's fused kernel (one kernel over all parameters): null = where the optimizer has
    # one (adam, adamw, sgd, momentum), true = required, false = off. On 2 CPU cores an Adam
    # step of resnet10t (4.9M parameters) takes 2.3 ms fused vs 23 ms per parameter
    fused: Optional[bool] = None


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
    # auto | fp32 | bf16 | fp16 autocast (fp16 only on CUDA, with a GradScaler). auto: bf16 on
    # a CUDA device that supports it, else fp32. Measured on an H200 (benchmarks/
    # gpu_results.md, 224 px, batch 128): bf16 + channels_last trains resnet18 and resnet50
    # 2.0-2.2x faster than fp32 (bf16 alone 1.06-1.09x); on a CPU fp32 is the faster one
    precision: str = "auto"
    # null (auto): channels_last on CUDA, where with bf16 it is the measured 2x; off elsewhere
    channels_last: Optional[bool] = None
    compile: bool = False
    # torch intra-op threads; 0 = all cores of this machine
    threads: int = 0
    # clip gradient norm (0 = off): the recipe warns that clipping hides bugs, so off by default
    grad_clip: float = 0.0
    # evaluate on the *whole* validation set every this many epochs (and always at the end)
    eval_every: int = 1
    # imbalanced classes (runner/imbalance.py): none | class_weights (the loss weighs each
    # class by n / (k * count)) | balanced_sampler (each epoch draws examples with probability
    # 1 / their class's count) | auto (class weights when the largest training class has
    # imbalance_ratio times the smallest's examples, else none); summary.json `imbalance`
    imbalance: str = "none"
    imbalance_ratio: float = 10.0
    # stop early when val loss has not improved for this many evaluations (0 = off)
    early_stopping_patience: int = 0
    # cap on optimiser steps per epoch (0 = a full pass); for quick checks and tests
    max_steps_per_epoch: int = 0
    # write checkpoints/last.pt every this many epochs (0 = by time only, below); the run's end
    # and any stop (a signal, early stopping) are always saved. Measured on 2 quiet cores
    # (digits, resnet10t, 59 MB with Adam's state): a last.pt every epoch costs ~0.15 s of a
    # 1.7 s epoch even on the background writer (it shares the cores), 0.87-0.95x a hand loop;
    # so by default a checkpoint is due by time, not by epoch
    checkpoint_every: int = 0
    # ... and whenever this many seconds have passed since the last one (0 = off): 60 s bounds
    # the work a kill can lose to a minute and the writer's cost to ~0.3% of the time
    checkpoint_every_s: float = 60.0
    progress: bool = True


@dataclass
class PredictionsConfig:
    """Report evidence of stage=baseline (not pass/fail): prediction dynamics, confusion
    matrix, top-loss validation images."""

    enabled: bool = True
    # fixed validation examples whose predictions are followed over the epochs
    examples: int = 8
    # highest-loss validation images shown
    top_losses: int = 16


def _checks_schema():
    """`checks`: `strict`, then one settings node per registered check (runner/checks/registry.py),
    keyed by the check name with '.' -> '_' (checks.init_loss.tolerance), so every check name
    that can appear in a checks.json can be switched off and a typo fails at compose time."""
    from dataclasses import make_dataclass

    from runner.checks.registry import CHECKS

    fields = [("strict", bool, True)]
    fields += [(c.key, c.settings, field(default_factory=c.settings)) for c in CHECKS.values()]
    fields.append(("predictions", PredictionsConfig, field(default_factory=PredictionsConfig)))
    cls = make_dataclass("ChecksConfig", fields)
    cls.__module__ = __name__
    cls.__doc__ = (
        "Sanity checks (runner/checks). `strict`: a failed check makes the exit code "
        "1; `<check>.enabled=false` skips a check."
    )
    return cls


ChecksConfig = _checks_schema()


@dataclass
class StageConfig:
    """Which procedure runs (runner/stages); stage YAMLs set this and what they change."""

    name: str = "baseline"
    # the stage's settings, typed by its Params (runner/stages/<name>.py): the stage YAML
    # puts that schema here (`/stage_params/<name>@stage.params` in its defaults)
    params: Any = field(default_factory=NoParams)


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
class _RunnerConfig:
    stage: StageConfig = field(default_factory=StageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    seed: int = 0
    # what validation selects on: accuracy | balanced_accuracy | macro_f1 | val_loss. Accuracy
    # (the default) and val_loss keep the recipe's in-run rule, best.pt and early stopping on
    # the val loss (smooth, where accuracy on a few hundred images ties between epochs), and
    # compare runs on the best epoch's accuracy (val_loss: its loss); balanced_accuracy and
    # macro_f1 (for imbalanced classes, where accuracy hides a class never predicted) pick the
    # epoch and compare runs on themselves. The test split is never selected on
    metric: str = "accuracy"
    # false, true (latest interrupted run under outputs/), or a run directory / checkpoint path
    resume: Any = False
    # a run directory or checkpoint whose model weights initialise this run (a warm start:
    # fresh optimiser and epochs); `from=<run dir>` sets it for stage=train (runner/lineage.py)
    init_from: Optional[str] = None
    # accuracy a person gets on this data, when known (reported next to the model's)
    human_baseline: Optional[float] = None
    # experiment name (set by experiment/*.yaml); shown in reports
    name: str = "default"
    # run code (a `_target_`) that only a run directory names: a from= source's config, the
    # overrides resume= reapplies, a checkpoint's stored config. Off: run folders and
    # checkpoints are data, and sharing one must not share code that runs when it is read
    trust_run_configs: bool = False


# `from=<run dir>`: where a run starts (an earlier run's outcome, runner/lineage.py). An
# ordinary key of the schema (so `from=` needs no `+` and `--cfg job` shows it); `from` is a
# Python keyword, hence added this way
RunnerConfig = keyword_fields(_RunnerConfig, "RunnerConfig", **{"from": (Optional[str], None)})


def schema(stage: Optional[str] = None):
    """The schema as a config node, with stage.params typed by `stage`'s Params (a saved
    config merged into it keeps its stage settings and their types)."""
    from omegaconf import OmegaConf

    from runner.stages import STAGES, get_stage

    node = OmegaConf.structured(RunnerConfig)
    if stage in STAGES:
        node.stage.params = OmegaConf.structured(get_stage(stage).Params)
    return node


_REGISTERED: set = set()  # the stage names whose schema this process's ConfigStore holds


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore as `runner_schema` (config.yaml extends it).
    Once per process (a structured config costs ~0.5 s to build, every in-process run and
    sub-run calls this), again when a stage was added since or the store lost the schema."""
    from hydra.core.config_store import ConfigStore

    from runner.stages import STAGES, get_stage

    cs = ConfigStore.instance()
    if set(STAGES) <= _REGISTERED and "runner_schema.yaml" in cs.repo:
        return
    cs.store(name="runner_schema", node=RunnerConfig)
    for name in STAGES:  # each stage's Params, typed (conf/stage/<name>.yaml selects it)
        cs.store(group="stage_params", name=name, node=get_stage(name).Params)
    _REGISTERED.update(STAGES)


# Keys that moved to their one home (issue 23): every check's thresholds under
# checks.<name>.*, stage=inspect's own settings under its stage.params. An old key is a config
# error that names the new one (moved_key_problem), never a silent no-op.
MOVED_KEYS = {
    "stage.params.train_loss_target": "checks.overfit_train_fit.train_loss_target",
    "stage.params.train_acc_target": "checks.overfit_train_fit.train_acc_target",
    "stage.params.first_layer_min_corr": "checks.regularize_first_layer.min_corr",
    "stage.params.first_layer_min_kernel": "checks.regularize_first_layer.min_kernel",
}


def moved_key(key: str) -> Optional[str]:
    """Where a key that moved lives now (None: it did not move)."""
    from dataclasses import fields as dc_fields

    from runner.checks.registry import CHECKS

    key = key.lstrip("+~")
    if key in MOVED_KEYS:
        return MOVED_KEYS[key]
    if key.startswith("inspect."):
        from runner.stages import get_stage

        leaf = key.split(".", 1)[1]
        if leaf in {f.name for f in dc_fields(get_stage("inspect").Params)}:
            return f"stage.params.{leaf} (of stage=inspect)"
        for c in CHECKS.values():
            if c.stage == "inspect" and leaf in {f.name for f in dc_fields(c.settings)}:
                return f"checks.{c.key}.{leaf}"
    if key == "inspect":
        return "checks.data_<check>.* (thresholds) and stage.params.* of stage=inspect"
    return None


def moved_key_in(e: BaseException) -> Optional[str]:
    """moved_key_problem for the key a compose error is about (Hydra chains the OmegaConf
    error as the cause, or only as the context when it merges a config file)."""
    inner = e.__cause__ or e.__context__
    return moved_key_problem(getattr(inner, "full_key", None))


def moved_key_problem(key: Optional[str]) -> Optional[str]:
    """The config error for a key that moved: the old key and the new one."""
    new = moved_key(key) if key else None
    if new is None:
        return None
    return (
        f"{key.lstrip('+~')} has moved: it is now {new} (each check's thresholds live under "
        "checks.<check name with _>.*; python -m runner --cfg job prints every key)"
    )


def _close(value: str, options, n: int = 3) -> str:
    near = difflib.get_close_matches(value, list(options), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(repr(x) for x in near)}?" if near else ""


def _choice(problems: List[str], key: str, value, allowed) -> None:
    if value not in allowed:
        problems.append(
            f"{key}={value!r} is not one of {', '.join(map(str, allowed))}{_close(str(value), allowed)}"
        )


# timm's interpolation names (create_transform's `interpolation`)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")


def pretrained_input(what: str, default: Any, *, _root_: Any) -> Any:
    """`${pretrained:input_size,16}` / `${pretrained:interpolation,bilinear}`: the model's
    pretrained input size (its height) or resize filter when `model` is a pretrained timm
    model with a data config, else `default`. A config that sets the key itself replaces
    the interpolation, and input.pretrained_norm then warns when it differs. timm is imported
    only for a pretrained model."""
    model = _root_.get("model") if _root_ is not None else None
    if model is None or not model.get("pretrained"):
        return default
    from runner.models import pretrained_data_config

    dc = pretrained_data_config(model) or {}
    if what == "input_size":
        size = dc.get("input_size")
        return int(size[-2]) if size and len(size) == 3 else default
    if what == "interpolation":
        return str(dc.get("interpolation") or default)
    raise ValueError(f"${{pretrained:{what},...}}: expected input_size or interpolation")


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("pretrained"):
        OmegaConf.register_new_resolver("pretrained", pretrained_input)


_register_resolvers()


def _positive(problems: List[str], key: str, value, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        problems.append(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def validate(cfg, original_cwd: Optional[str] = None, user_overrides=None) -> None:
    """Check the composed config; gather every problem and raise one ConfigError.

    `user_overrides`: the overrides the user gave (runner/jobs.py plan); None: this Hydra
    run's own (its command line), as the CLI's task has them.

    Type and unknown-key errors are Hydra's (compose time); these are the semantic ones.
    Only light imports here except the timm model lookup, done only when a name is set.
    """
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:  # `???` in YAML: the user must give these
        raise ConfigError(
            [f"{k} is required but not set (the YAML has ???); add {k}=..." for k in missing]
        )
    p: List[str] = unknown_keys(cfg)
    base = Path(original_cwd or os.getcwd())

    from runner.stages import STAGES, stage_flag

    _choice(p, "stage.name", cfg.stage.name, sorted(STAGES))
    # a stage that hands its command on (the recipe) lets each of its stages judge the files
    # and the keys it reads
    passes_on = stage_flag(str(cfg.stage.name), "PASSES_OVERRIDES")
    _data_problems(p, cfg, base)
    _model_problems(p, cfg, base, passes_on)
    _training_problems(p, cfg, original_cwd)
    check_settings_problems(p, cfg.checks)
    if not passes_on:
        unread_key_problems(p, cfg, user_set_keys(user_overrides))

    if p:
        raise ConfigError(p)


def _data_problems(p: List[str], cfg, base: Path) -> None:
    """data.*: the kind, sizes, fractions, normalisation and each kind's own keys."""
    d = cfg.data
    from runner.data import DATA_KINDS  # the registry beside the builders (imports torch)

    _choice(p, "data.kind", d.kind, sorted(DATA_KINDS))
    _positive(p, "data.image_size", d.image_size)
    if not 0.0 < d.val_fraction < 1.0:
        p.append(f"data.val_fraction={d.val_fraction!r} must be between 0 and 1 (exclusive)")
    if not 0.0 < d.train_fraction <= 1.0:
        p.append(
            f"data.train_fraction={d.train_fraction!r} must be > 0 and <= 1 (the share of the "
            "training split to train on; 1 = all of it)"
        )
    if not 0.0 <= d.test_fraction < 1.0:
        p.append(f"data.test_fraction={d.test_fraction!r} must be >= 0 and < 1 (0 = no test split)")
    elif d.val_fraction + d.test_fraction >= 0.9:
        p.append(
            f"data.val_fraction={d.val_fraction!r} + data.test_fraction={d.test_fraction!r} "
            "leave under 10% of the images to train on; lower one of them"
        )
    _choice(p, "data.channels", d.channels, (1, 3))
    for key in ("mean", "std"):
        v = d[key]
        if v is not None and len(v) not in (1, d.channels):
            p.append(f"data.{key} has {len(v)} values; expected 1 or data.channels={d.channels}")
    if d.std is not None and any(x <= 0 for x in d.std):
        p.append(f"data.std={list(d.std)} must be > 0 per channel")
    if d.num_workers is not None:
        _positive(p, "data.num_workers", d.num_workers, allow_zero=True)
    _choice(p, "data.on_unreadable", d.on_unreadable, ON_UNREADABLE)
    _choice(p, "data.interpolation", d.interpolation, INTERPOLATIONS)
    if d.kind == "imagefolder":
        if not d.root:
            p.append(
                "data.root is not set; expected a folder with train/ and val/ class folders "
                "(or one folder of class folders) for data=imagefolder"
            )
        elif not (base / d.root).expanduser().is_dir():
            p.append(
                f"data.root={d.root!r} is not a folder (looked in {(base / d.root).expanduser()}); "
                "expected train/ and val/ class folders or one folder of class folders"
            )
    if d.kind == "manifest":
        files = [d.files] if isinstance(d.files, str) else list(d.files or [])
        if not files:
            p.append(
                "data.files is not set; expected a CSV or JSON labels file of path,label rows "
                "(or a list of them) for data=manifest"
            )
        for f in files:
            if not (base / str(f)).expanduser().is_file():
                p.append(
                    f"data.files: {f!r} is not a file (looked in {(base / str(f)).expanduser()}); "
                    "expected a CSV or JSON labels file of path,label rows"
                )
    if d.kind == "hf":
        if not d.root:
            p.append(
                "data.root is not set; expected a folder written by save_to_disk (or an image "
                "folder) for data=hf"
            )
        elif not (base / d.root).expanduser().is_dir():
            p.append(
                f"data.root={d.root!r} is not a folder (looked in {(base / d.root).expanduser()}); "
                "expected a folder written by datasets' save_to_disk, or an image folder"
            )
    if d.kind == "wds" and not (d.shards or {}).get("train"):
        p.append(
            "data.shards.train is not set; expected the training shards for data=wds, e.g. "
            "data.shards.train='data/train-{000..009}.tar'"
        )
    if d.kind == "wds":
        _positive(p, "data.shuffle_buffer", d.shuffle_buffer, allow_zero=True)
        _positive(p, "data.sample_size", d.sample_size)
    if d.kind == "torchvision":
        if not d.name:
            p.append(
                "data.name is not set; expected a torchvision dataset class, e.g. data.name=CIFAR10"
            )
        if not d.root:
            p.append("data.root is not set; expected the folder the torchvision dataset lives in")
    if d.kind == "custom" and not d._target_:
        p.append(
            "data._target_ is not set; expected a dotted path to a callable returning (train, val)"
        )
    if d.kind == "synthetic":
        if d.num_classes < 2:
            p.append(
                f"data.num_classes={d.num_classes} must be >= 2: with one class the loss "
                "is 0 from the start and nothing is learned; e.g. data.num_classes=4"
            )
        _positive(p, "data.num_train", d.num_train)
        _positive(p, "data.num_val", d.num_val)
        _positive(p, "data.num_test", d.num_test, allow_zero=True)
        if d.num_classes > 16:
            p.append(f"data.num_classes={d.num_classes} must be <= 16 for synthetic data")


def _model_problems(p: List[str], cfg, base: Path, passes_on: bool) -> None:
    """model.*: a timm name that exists and takes the input size, or a _target_; the files."""
    d, m = cfg.data, cfg.model
    if not m._target_ and not m.name:
        p.append(
            "model.name is not set; expected a timm model name (e.g. resnet18) or model._target_"
        )
    if m.pretrained_file and not (base / m.pretrained_file).expanduser().is_file():
        p.append(f"model.pretrained_file={m.pretrained_file!r} is not a file")
    if m.pretrained_file and not reads_pretrained_file(cfg) and not passes_on:
        p.append(
            "model.pretrained_file is set but model.pretrained=false; set model.pretrained=true"
        )
    for key in ("drop_rate", "drop_path_rate"):
        if not 0.0 <= m[key] < 1.0:
            p.append(f"model.{key}={m[key]!r} must be in [0, 1)")
    if m.name and not m._target_:
        problem = timm_model_problem(m.name)
        if problem:
            p.append(problem)
        elif d.image_size > 0:
            from runner.models import input_size_problem

            problem = input_size_problem(m.name, m.kwargs, d.image_size)
            if problem:
                p.append(problem)


def _training_problems(p: List[str], cfg, original_cwd: Optional[str]) -> None:
    """optim.*, sched.*, aug.*, trainer.* and the run's own keys (metric, init_from, resume)."""
    o, s, t, a = cfg.optim, cfg.sched, cfg.trainer, cfg.aug
    _choice(p, "metric", cfg.metric, METRICS)
    _choice(p, "trainer.imbalance", t.imbalance, IMBALANCE)
    if not t.imbalance_ratio > 1:
        p.append(
            f"trainer.imbalance_ratio={t.imbalance_ratio!r} must be > 1 (largest / smallest "
            "training class count from which trainer.imbalance=auto weighs the classes)"
        )
    _choice(p, "optim.name", o.name, OPTIMIZERS)
    if o.fused and o.name in OPTIMIZERS and o.name not in FUSED_OPTIMIZERS:
        p.append(
            f"optim.fused=true but optim.name={o.name!r} has no fused kernel (those with one: "
            f"{', '.join(FUSED_OPTIMIZERS)}); set optim.fused=null (auto) or false"
        )
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

    _positive(p, "trainer.epochs", t.epochs)
    _positive(p, "trainer.batch_size", t.batch_size)
    _choice(p, "trainer.device", t.device, DEVICES)
    _choice(p, "trainer.precision", t.precision, PRECISIONS)
    _positive(p, "trainer.threads", t.threads, allow_zero=True)
    _positive(p, "trainer.grad_clip", t.grad_clip, allow_zero=True)
    _positive(p, "trainer.eval_every", t.eval_every)
    _positive(p, "trainer.early_stopping_patience", t.early_stopping_patience, allow_zero=True)
    _positive(p, "trainer.max_steps_per_epoch", t.max_steps_per_epoch, allow_zero=True)
    _positive(p, "trainer.checkpoint_every", t.checkpoint_every, allow_zero=True)
    _positive(p, "trainer.checkpoint_every_s", t.checkpoint_every_s, allow_zero=True)
    if cfg.human_baseline is not None and not 0.0 <= cfg.human_baseline <= 1.0:
        p.append(f"human_baseline={cfg.human_baseline!r} must be an accuracy in [0, 1]")
    init_from = cfg.get("init_from")
    if (
        init_from
        and original_cwd is not None
        and not (Path(original_cwd) / str(init_from)).expanduser().exists()
    ):
        p.append(
            f"init_from={init_from!r}: no such run directory or checkpoint file "
            f"(looked in {(Path(original_cwd) / str(init_from)).expanduser()})"
        )
    if not isinstance(cfg.resume, (bool, str)):
        p.append(f"resume={cfg.resume!r} must be true, false or a run directory / checkpoint path")


def unknown_keys(cfg, extra=("from",)) -> List[str]:
    """Keys of typed nodes that their dataclass does not have: Hydra's `+key=value` adds a key
    even to a schema node, so a typo with '+' (or in a YAML file merged with '+') would be
    carried along unread. `extra`: top-level keys that are added on purpose (`from=`)."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    problems: List[str] = []

    def walk(node, prefix: str, allowed_extra=()) -> None:
        t = OmegaConf.get_type(node)
        names = {f.name for f in dataclasses.fields(t)} if dataclasses.is_dataclass(t) else None
        for k in node.keys():
            key = f"{prefix}.{k}" if prefix else str(k)
            if names is not None and k not in names and k not in allowed_extra:
                moved = moved_key_problem(key)
                if moved:
                    problems.append(f"{key}: {moved}")
                    continue
                where = f"{prefix} has no key {k!r}" if prefix else f"the config has no key {k!r}"
                near = difflib.get_close_matches(str(k), sorted(names), n=1, cutoff=0.6)
                hint = (
                    f"; did you mean {(prefix + '.' if prefix else '') + near[0]!r}?"
                    if near
                    else f"; its keys: {', '.join(sorted(names))}"
                )
                problems.append(f"{key}: {where}{hint}")
                continue
            if OmegaConf.is_missing(node, k) or OmegaConf.is_interpolation(node, k):
                continue
            child = node[k]
            if isinstance(child, DictConfig):
                walk(child, key)

    walk(cfg, "", extra)
    return problems


def timm_model_problem(name: str) -> Optional[str]:
    """A message when `name` is not a timm model (with close names), else None."""
    import timm

    if timm.is_model(name):
        return None
    near = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = (
        f"; did you mean {', '.join(repr(x) for x in near)}?"
        if near
        else "; see timm.list_models() or use model=custom with model._target_"
    )
    return f"model.name={name!r} is not a timm model{hint}"


# numeric check settings by name (runner/checks/registry.py) and what a value must be: a
# distance or bound that still passes cannot be negative; a count of steps/examples/epochs or
# an lr of 0 makes the check meaningless; a p-value threshold lies strictly between 0 and 1
_CHECK_SETTING_RULES = (
    (("tolerance", "margin", "min_*", "max_*", "*_below"), ">= 0"),
    (("steps", "examples", "epochs", "lr"), "> 0"),
    (("alpha",), "in (0, 1)"),
)


def check_settings_problems(problems: list[str], checks) -> None:
    """The generic rule over every check's numeric settings (whatever the registry holds)."""
    from fnmatch import fnmatch

    from omegaconf import DictConfig

    for name, node in checks.items():
        if not isinstance(node, DictConfig):
            continue
        for key, value in node.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            rule = next(
                (
                    r
                    for pats, r in _CHECK_SETTING_RULES
                    if any(fnmatch(str(key), pat) for pat in pats)
                ),
                None,
            )
            ok = {
                ">= 0": lambda v: v >= 0,
                "> 0": lambda v: v > 0,
                "in (0, 1)": lambda v: 0 < v < 1,
                None: lambda v: True,
            }[rule](value)
            if not ok:
                default = getattr(getattr(ChecksConfig(), str(name), None), str(key), None)
                hint = f" (default {default})" if default is not None else ""
                problems.append(
                    f"checks.{name}.{key}={value!r} must be {rule}{hint}; "
                    f"or switch the check off with checks.{name}.enabled=false"
                )


def override_key(override: str) -> str:
    """The key (or config group) a command-line override sets, as Hydra's `key_or_group`:
    "+a.b=c" -> "a.b", "~a.b" -> "a.b", "aug@x=light" -> "aug". Overrides whose value
    matters (group choices, sweeps) go through Hydra's OverridesParser instead."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0].strip()


def overrides_yaml(
    overrides: Sequence[str],
    groups: Iterable[str],
    header: Sequence[str] = (),
    values: Optional[dict] = None,
    primary: bool = False,
) -> str:
    """Hydra overrides as a config file, `header` lines as its leading comments.

    An experiment file (`# @package _global_`, run with `experiment=<name>`), or with
    `primary` a primary config on top of conf/config.yaml that runs stage=train (run with
    `--config-dir <dir> --config-name <name>`). Group choices (`aug=light`) become defaults
    entries (`override /aug: light`; in a primary config `override aug: light`); other keys
    (`optim.lr=3e-3`) are nested (`optim: {lr: 0.003}`) with their parsed types. `values`
    (dotted key -> value, e.g. what `from=` took from a source run) go in first; deletions
    are left out.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    groups = set(groups)
    slash = "" if primary else "/"
    defaults: list[Any] = []
    body: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        node = body
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    for key, value in (values or {}).items():
        put(key, value)
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_delete():
            continue
        key, value = o.key_or_group, o.value()
        if key in groups:
            entry = f"{slash}{key}" if o.is_add() else f"override {slash}{key}"
            defaults = [d for d in defaults if entry not in d]
            defaults.append({entry: value})
            continue
        put(key, value)
    if primary:
        defaults = ["config", {"override stage": "train"}, *defaults, "_self_"]
    doc: dict[str, Any] = {"defaults": defaults} if defaults else {}
    doc.update(body)
    text = OmegaConf.to_yaml(OmegaConf.create(doc)) if doc else "{}\n"
    lines = ([] if primary else ["@package _global_"]) + list(header)
    return "".join(f"# {h}\n" if h else "#\n" for h in lines) + text


def user_set_keys(overrides=None) -> dict[str, Any]:
    """key -> (where, value) for every key this run's user set explicitly: the command line's
    overrides (`overrides`, else Hydra's hydra.overrides.task; group choices included) and the
    keys of the selected experiment file. Keys set by option or stage files are not the
    user's. Empty outside a Hydra run when no overrides are given."""
    from hydra.core.hydra_config import HydraConfig

    if overrides is None:
        if not HydraConfig.initialized():
            return {}
        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        exp = hc.runtime.choices.get("experiment")
    else:
        overrides = [str(o) for o in overrides]
        named = [o.split("=", 1)[1] for o in overrides if override_key(o) == "experiment"]
        exp = named[-1] if named else None
    out: dict[str, Any] = {}
    if exp and str(exp) not in ("null", "None"):
        out.update(_experiment_keys(str(exp)))
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 -- Hydra parsed them already; nothing to add if it cannot
        return out
    for o in parsed:
        if not o.is_delete():
            out[o.key_or_group] = ("set on the command line", o.value())
    return out


def _experiment_keys(name: str) -> dict[str, Any]:
    """The dotted keys an experiment file sets (its `# @package _global_` body; its defaults
    list picks options, which is not setting keys)."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    path = f"experiment/{name}"
    try:
        src = next(
            s for s in GlobalHydra.instance().config_loader().get_sources() if s.is_config(path)
        )
        res = src.load_config(path)
    except Exception:  # noqa: BLE001 -- no such file here (Hydra said so already)
        return {}
    package = str((res.header or {}).get("package") or "")
    if package != "_global_" and not package.startswith("_global_."):
        return {}  # not a global overlay: its keys land under experiment.*
    prefix = package[len("_global_.") :] if "." in package else ""
    body = OmegaConf.to_container(res.config, resolve=False)
    where = f"set in experiment={name}: {getattr(src, 'path', '')}/{path}.yaml"
    out: dict[str, Any] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                if k != "defaults" or key:
                    walk(v, f"{key}.{k}" if key else str(k))
        elif key:
            out[key] = (where, node)

    walk(body, prefix)
    return out


def unread_keys(cfg, keys) -> list[str]:
    """Of dotted `model.*` / `data.*` keys, those the selected model/data option does not read
    (runner/models.py MODEL_KEYS, runner/data.py DATA_KINDS; a key in no table is read by all)."""
    out = []
    for key in keys:
        group, _, rest = str(key).partition(".")
        if group == "model":
            from runner import models

            table, kind = models.MODEL_KEYS, models.model_kind(cfg.model)
        elif group == "data":
            from runner import data

            table, kind = data.kind_keys(), str(cfg.data.kind)
        else:
            continue
        leaf = rest.split(".")[0]
        if leaf in {k for ks in table.values() for k in ks} and leaf not in table.get(kind, ()):
            out.append(key)
        elif key == "model.pretrained_file" and not reads_pretrained_file(cfg):
            out.append(key)  # a stage that trains from scratch (the recipe's baseline)
    return out


def reads_pretrained_file(cfg) -> bool:
    """model.pretrained_file is read when the model is pretrained, or when one of the stage's
    ladder rungs turns pretrained weights on (regularize's `pretrained` rung, `when:
    model.pretrained_file`): there the base trains from scratch and the rung tries the file."""
    from omegaconf import OmegaConf

    if cfg.model.get("pretrained"):
        return True
    rungs = OmegaConf.select(cfg, "stage.params.rungs", default=None) or []
    return any(
        override_key(str(o)) == "model.pretrained"
        and str(o).partition("=")[2].strip().lower() in ("true", "1", "yes")
        for rung in rungs
        for o in rung.get("overrides") or []
    )


def unread_key_problems(problems: list[str], cfg, user: dict[str, Any]) -> None:
    """A model.* or data.* key the user set that the selected option does not read would be
    silently ignored (`model.name=resnet18` with model=tiny_cnn trains a TinyCNN): a problem
    naming the option that reads it. The tables live beside the builders: runner/models.py
    MODEL_KEYS, runner/data.py DATA_KINDS; a key in no table entry is read by every option.

    In a sweep over a group's options (`-m data=digits,custom data._target_=x`) a job whose
    option does not read such a key only logs a warning: the sweep sets it for the others."""
    import logging

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    wanted = [
        (k, w, v)
        for k, (w, v) in user.items()
        if k.split(".")[0] in ("model", "data") and "." in k and v is not None
    ]
    if not wanted:
        return
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    for group in ("model", "data"):
        mine = [(k, w, v) for k, w, v in wanted if k.split(".")[0] == group]
        if not mine:
            continue
        if group == "model":
            from runner import models

            table, kind = models.MODEL_KEYS, models.model_kind(cfg.model)
            option = {"timm": "timm", "custom": "custom"}
            selected = f"model={choices.get('model') or kind}" + (
                f" (built by model._target_={cfg.model._target_!r})" if kind == "custom" else ""
            )
        else:
            from runner import data

            table, kind = data.kind_keys(), str(cfg.data.kind)
            option = {k: k for k in table}
            chosen = choices.get("data") or kind
            selected = f"data={chosen}" + (f" (data.kind={kind})" if chosen != kind else "")
        specific = {k for keys in table.values() for k in keys}
        for key, where, value in mine:
            leaf = key.split(".")[1]
            if leaf not in specific or leaf in table.get(kind, ()):
                continue
            readers = [option[k] for k, keys in table.items() if leaf in keys]
            shown = value if isinstance(value, (str, int, float)) else repr(value)
            text = (
                f"{key}={shown} ({where}) is not read by {selected}, so it would be "
                f"ignored; {group}.{leaf} is read by "
                f"{', '.join(f'{group}={r}' for r in readers)}"
            )
            if where == "set on the command line":
                text += f"; did you mean `{group}={readers[0]} {key}={shown}`?"
            else:
                text += (
                    f"; add `- override /{group}: {readers[0]}` to the experiment's "
                    f"defaults, or remove {key}"
                )
            if sweep and group in user:
                logging.getLogger("runner").warning("%s (left as is in this sweep job)", text)
            else:
                problems.append(text)
