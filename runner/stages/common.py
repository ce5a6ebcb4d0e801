"""What every training stage shares: runtime set-up, builders, and one supervised run.

`train_run` is the recipe's skeleton as a list of steps, each with a log line: build the
data, the model, the optimiser and schedule, (resume,) train with the one loop, checkpoint
as it goes (on a background thread), then hand back what happened. Stages add their
checks and report sections.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from runner import imbalance
from runner.checkpoint import (
    CheckpointWriter,
    best_checkpoint,
    find_resume_checkpoint,
    load_checkpoint,
    make_checkpoint,
    restore,
    usage_meta,
    weights_of,
)
from runner.checks import Verdict
from runner.data import DataBundle, build_data, default_workers, train_transform
from runner.distributed import from_env
from runner.errors import ConfigError, Interrupted, NonFiniteLoss
from runner.loggers import build_loggers
from runner.loop import Callback, EpochRecord, LoopOptions, LoopState, Stop, fit
from runner.metrics import best_epoch_on, evaluation_block
from runner.models import build_model, count_params
from runner.optim import build_loss_and_mixup, build_optimizer, build_scheduler
from runner.output import RunDir, owned
from runner.stages.protocol import Context, Rows, StageResult, run_check

log = logging.getLogger("runner")


@dataclass
class TrainResult:
    data: DataBundle
    model: torch.nn.Module
    device: torch.device
    history: List[Dict[str, Any]]
    last: Optional[EpochRecord]
    state: LoopState
    nonfinite: Optional[NonFiniteLoss]
    resumed_from: Optional[str]
    params: int
    stop_reason: Optional[str] = None
    records: List[EpochRecord] = field(default_factory=list)
    pruned: bool = False  # stopped by a tuning trial's pruner (a Stop with pruned=True)
    compile_s: Optional[float] = None  # torch.compile's time (trainer.compile), about
    # the final model's evaluation (final_evaluation): val and test, per class; None for a
    # check's own run (write_metrics=False)
    final: Optional[Dict[str, Any]] = None
    # what trainer.imbalance came to (runner/imbalance.py Imbalance)
    imbalance: Any = None


# ----------------------------------------------------------------------------- runtime
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.device='cuda' but no CUDA device is visible; use trainer.device=auto or cpu"
        )
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(
            "trainer.device='mps' but MPS is not available; use trainer.device=auto or cpu"
        )
    return torch.device(name)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def input_path(precision: str, channels_last, device: torch.device) -> tuple:
    """(precision, channels_last) with `auto`/null resolved for `device`: bf16 autocast and
    channels_last on a CUDA device with bf16, where they measured 2x fp32 (resnet18/50 on an
    H200, benchmarks/gpu_results.md); fp32 and the default layout elsewhere."""
    cuda = device.type == "cuda"
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if channels_last is None:
        channels_last = cuda
    return precision, bool(channels_last)


def setup_runtime(cfg) -> torch.device:
    """Seed, threads and device in one place (STYLE habit 11)."""
    t = cfg.trainer
    dist_info = from_env()
    device = resolve_device(t.device)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    if t.precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"trainer.precision='fp16' needs CUDA (device is {device.type}); "
            "use bf16 or fp32 on CPU"
        )
    # DDP ranks share the machine's cores instead of each taking all of them
    threads = t.threads or max(1, (os.cpu_count() or 1) // dist_info.world)
    torch.set_num_threads(threads)
    set_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    return device


def provenance(cfg, original_cwd: str, data: DataBundle, device: torch.device) -> Dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("torch", "timm", "optuna", "hydra-core", "omegaconf", "recipe-runner"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    git = None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=original_cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0:
            dirty = (
                subprocess.run(
                    ["git", "status", "--porcelain"],
                    cwd=original_cwd,
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.strip()
                != ""
            )
            git = {"commit": out.stdout.strip(), "dirty": dirty, "repo": original_cwd}
    except (OSError, subprocess.SubprocessError):
        pass
    precision, channels_last = input_path(cfg.trainer.precision, cfg.trainer.channels_last, device)
    return {
        "versions": versions,
        "python": platform.python_version(),
        "git": git,
        "data_fingerprint": data.fingerprint,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        # what trainer.precision / channels_last (auto / null in the config) came to here
        "precision": precision,
        "channels_last": channels_last,
        "hostname": platform.node(),
    }


# ----------------------------------------------------------------------------- builders
def build_data_for(cfg, ctx: Context) -> DataBundle:
    log.info("data: %s", cfg.data.kind)
    # the model node: a pretrained model's own mean/std when data.mean/std are null
    data = build_data(cfg.data, ctx.original_cwd, model=cfg.model)
    log.info(
        "data: %d train / %d val images, %d classes, %d channel(s), %dx%d px",
        len(data.train),
        len(data.val),
        data.num_classes,
        data.in_chans,
        data.image_size,
        data.image_size,
    )
    return data


def build_model_for(cfg, data: DataBundle, ctx: Context, device: torch.device) -> torch.nn.Module:
    model = build_model(cfg.model, data.num_classes, data.in_chans, ctx.original_cwd)
    model = model.to(device)
    if input_path(cfg.trainer.precision, cfg.trainer.channels_last, device)[1]:
        model = model.to(memory_format=torch.channels_last)
    log.info(
        "model: %s, %s parameters", cfg.model._target_ or cfg.model.name, f"{count_params(model):,}"
    )
    return model


def loaders(
    cfg, data: DataBundle, device: torch.device, zero_inputs: bool = False, sample_weights=None
):
    t, d = cfg.trainer, cfg.data
    di = from_env()
    if t.batch_size % di.world:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} must be divisible by the "
            f"{di.world} DDP processes (it is the global batch)"
        )
    aug_tf = train_transform(cfg.aug, data.image_size, data.mean, data.std, data.interpolation)
    mixup = cfg.aug.mixup_alpha > 0 or cfg.aug.cutmix_alpha > 0
    workers = d.num_workers if d.num_workers is not None else default_workers(device)
    train_loader = data.train.loader(
        t.batch_size,
        True,
        cfg.seed,
        device,
        train=True,
        num_workers=workers,
        drop_last=mixup,
        zero_inputs=zero_inputs,
        aug_transform=aug_tf,
        rank=di.rank,
        world=di.world,
    )
    val_loader = data.val.loader(
        t.batch_size * 2,
        False,
        cfg.seed,
        device,
        train=False,
        num_workers=workers,
        zero_inputs=zero_inputs,
        rank=di.rank,
        world=di.world,
    )
    # trainer.imbalance=balanced_sampler (runner/imbalance.py): the epoch's draw
    train_loader.sample_weights = sample_weights
    return train_loader, val_loader


# ----------------------------------------------------------------------------- one run
class _StopOnSignal:
    """SIGINT/SIGTERM ask the loop to stop after the current step (it then checkpoints)."""

    def __init__(self):
        import signal
        import threading

        self.signum = None
        self._at = 0.0
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    # a repeat within this many seconds is the same request delivered twice (the terminal and
    # torchrun both forward Ctrl-C), not a person pressing it again
    REPEAT_S = 2.0

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.signum is not None:
            if now - self._at < self.REPEAT_S:
                return
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum, self._at = signum, now
        log.warning(
            "signal %d: stopping after this step and saving a checkpoint (again to stop at once)",
            signum,
        )

    def requested(self) -> bool:
        return self.signum is not None

    def signal(self) -> int:
        """The loop's stop_signal: the signal number asked to stop on, or 0."""
        return int(self.signum or 0)

    def restore(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def init_weights(
    model: torch.nn.Module, spec: str, original_cwd: str, optional: bool = False
) -> Optional[Path]:
    """`init_from=<run dir or .pt>`: load only the model weights (a warm start).

    `optional` (a warm start `from=` chose, not the user): weights that do not fit this model
    are skipped with a warning (None) instead of refusing the run."""
    p = (Path(original_cwd) / str(spec)).expanduser()
    if p.is_dir():
        weights = best_checkpoint(p)
        if weights is None:  # a ladder, study, squeeze or recipe run: its outcome's weights
            from runner.lineage import outcome

            try:
                weights = outcome(p).weights
            except ConfigError:
                weights = None
            if weights is None:
                raise ConfigError(
                    f"init_from={spec!r}: no checkpoints/best.pt or last.pt in {p}, "
                    "and it is no ladder, study, squeeze or recipe run with one"
                )
        p = weights
    if not p.is_file():
        raise ConfigError(f"init_from={spec!r}: no such file or run directory ({p})")
    ck = load_checkpoint(p)
    if ck.get("kind") == "ensemble":  # runner/ensemble.py: several models, no one state
        runs = ", ".join(str(m.get("run")) for m in ck["members"])
        raise ConfigError(
            f"init_from={spec!r}: {p} is an ensemble of {len(ck['members'])} models, not one "
            f"model's weights; start from one of its members: init_from=<one of {runs}>"
        )
    try:
        restore({"model": ck["model"], "loop": {}, "meta": ck.get("meta") or {}}, p, model)
    except ConfigError as e:
        if not optional:
            raise
        log.warning("from=: no warm start: %s; training from scratch", e)
        return None
    log.info("init_from: model weights from %s (fresh optimiser and epochs)", p)
    return p


def early_stopping(patience: int, what: str = "val loss") -> Callback:
    """trainer.early_stopping_patience: stop when `what` (the loop's best_on) has not improved
    for `patience` evaluations in a row."""

    def callback(rec: EpochRecord) -> Optional[str]:
        if rec.evaluated and rec.evals_since_best >= patience:
            return f"early stopping: {what} has not improved for {rec.evals_since_best} evaluations"
        return None

    return callback


def _first_stop(callbacks: Sequence[Callback], rec: EpochRecord) -> Optional[Stop]:
    for cb in callbacks:
        out = cb(rec)
        if out:
            return out if isinstance(out, Stop) else Stop(str(out))
    return None


@dataclass
class Parts:
    """What one run trains: built from the config by `build_parts`."""

    device: torch.device
    data: DataBundle
    model: torch.nn.Module
    train_loader: Any
    val_loader: Any
    loss_fn: Any
    mixup: Any
    optimizer: Any
    scheduler: Any
    # what trainer.imbalance came to (runner/imbalance.py)
    imbalance: Any = None


def build_parts(cfg, ctx: Context, data, model, zero_inputs: bool) -> Parts:
    """Seed and device, the data, the model, the loaders, the loss, optimiser and schedule."""
    device = setup_runtime(cfg)
    data = data or build_data_for(cfg, ctx)
    if model is None:
        model = build_model_for(cfg, data, ctx, device)
    imb = imbalance.resolve(
        str(cfg.trainer.imbalance),
        data.train.labels,
        data.num_classes,
        float(cfg.trainer.imbalance_ratio),
    )
    if imb.setting != "none":
        log.info("imbalance: %s", imb.reason)
    train_loader, val_loader = loaders(cfg, data, device, zero_inputs, imb.sample_weights)
    loss_fn, mixup = build_loss_and_mixup(cfg.aug, data.num_classes, imb.class_weights)
    optimizer = build_optimizer(cfg.optim, model)
    t = cfg.trainer
    steps = len(train_loader)
    if t.max_steps_per_epoch:
        steps = min(steps, t.max_steps_per_epoch)
    scheduler = build_scheduler(cfg.sched, optimizer, t.epochs, steps)
    log.info(
        "optim: %s lr=%g wd=%g; schedule: %s over %d epochs x %d steps",
        cfg.optim.name,
        cfg.optim.lr,
        cfg.optim.weight_decay,
        cfg.sched.name,
        t.epochs,
        steps,
    )
    return Parts(
        device, data, model, train_loader, val_loader, loss_fn, mixup, optimizer, scheduler, imb
    )


def start_state(cfg, ctx: Context, parts: Parts, save_checkpoints: bool):
    """(loop state, the checkpoint resumed from): resume= a checkpoint (model, optimiser,
    schedule and loop), else init_from= weights (a warm start), else a fresh start."""
    ckpt_path = (
        find_resume_checkpoint(cfg.resume, Path(ctx.original_cwd) / "outputs")
        if save_checkpoints
        else None
    )
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("kind") == "weights":
            raise ConfigError(
                f"resume={cfg.resume!r}: {ckpt_path} holds only model weights "
                "(a best.pt); resume from the run's checkpoints/last.pt, or start "
                "from these weights with init_from="
            )
        state = restore(ckpt, ckpt_path, parts.model, parts.optimizer, parts.scheduler)
        log.info("resume: from %s at epoch %d, step %d", ckpt_path, state.epoch, state.step)
        return state, str(ckpt_path)
    if cfg.get("init_from"):
        implicit = bool(ctx.lineage) and ctx.lineage.get("weights") == str(cfg.init_from)
        init_weights(parts.model, cfg.init_from, ctx.original_cwd, optional=implicit)
    return LoopState(), None


def _net(model: torch.nn.Module, device: torch.device, compile_: bool):
    """The module the loop calls: DDP-wrapped under torchrun, compiled when asked."""
    net = model
    if from_env().enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if compile_ else net


def loop_options(cfg, parts: Parts, state: LoopState, keep_val_logits: bool) -> LoopOptions:
    t = cfg.trainer
    # auto / null resolved for this device; the config keeps them as written (from= and
    # checkpoints carry the choice, not what one machine made of it)
    precision, channels_last = input_path(t.precision, t.channels_last, parts.device)
    return LoopOptions(
        mixup=parts.mixup,
        precision=precision,
        channels_last=channels_last,
        grad_clip=t.grad_clip,
        eval_every=t.eval_every,
        max_steps_per_epoch=t.max_steps_per_epoch,
        keep_val_logits=keep_val_logits,
        progress=t.progress,
        time_first_step=t.compile and state.step == 0,
        best_on=best_epoch_on(str(cfg.get("metric") or "accuracy")),
    )


class Checkpoints:
    """When and what a run saves, on a background thread (rank 0): last.pt every
    checkpoint_every epochs / seconds, at a signal and at the run's end; a new best's weights
    are snapshotted (a CPU copy) and written with the next last.pt, not at every new best
    epoch: each write costs the training threads CPU time, and best.pt never needs to be newer
    than last.pt (a resume recomputes the epochs after last.pt, and so their bests)."""

    def __init__(self, cfg, ctx: Context, parts: Parts, state: LoopState, enabled: bool):
        self.t, self.state = cfg.trainer, state
        self.writer = CheckpointWriter(ctx.run) if enabled and ctx.run.enabled else None
        self.saved = (state.epoch, state.step)  # the loop position of the newest last.pt
        self.best_pending = None  # the newest best's weights (weights_of), until written
        self.saved_at = time.monotonic()
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        meta = {
            "model": cfg.model._target_ or cfg.model.name,
            "num_classes": parts.data.num_classes,
            "in_chans": parts.data.in_chans,
            "image_size": parts.data.image_size,
            "data_fingerprint": parts.data.fingerprint,
            "stage": cfg.stage.name,
            # what using the weights needs (predict, export, any other tool): the classes and
            # the exact eval preprocessing (runner/checkpoint.py usage_meta)
            **usage_meta(cfg, parts.data, ctx.original_cwd),
        }

        def snapshot(full: bool = True):  # taken on this thread, written by the writer's
            return make_checkpoint(
                parts.model,
                parts.optimizer if full else None,
                parts.scheduler if full else None,
                state,
                config_yaml,
                meta,
            )

        self.snapshot = snapshot

    def _write(self, last) -> None:
        self.writer.submit(_checkpoint_files(last, self.best_pending))
        self.best_pending = None
        self.saved, self.saved_at = (self.state.epoch, self.state.step), time.monotonic()

    def interrupted(self) -> None:
        """A signal mid-epoch: the half-done epoch saved exactly, before fit's barrier lets
        any DDP rank exit."""
        if self.writer is not None:
            self._write(self.snapshot())
            self.writer.wait()
        self.saved = (self.state.epoch, self.state.step)

    def epoch_done(self, rec: EpochRecord, stop) -> None:
        if self.writer is None:
            return
        every, every_s = self.t.checkpoint_every, self.t.checkpoint_every_s
        due = bool(
            stop
            or rec.signum
            or (every and rec.epoch % every == 0)
            or (every_s and time.monotonic() - self.saved_at >= every_s)
        )
        last = self.snapshot() if due else None
        if rec.best:
            self.best_pending = weights_of(last or self.snapshot(False))
        if due:
            self._write(last)
        if rec.signum:  # DDP: rank 0 has written it before fit's barrier
            self.writer.wait()

    def run_end(self, nonfinite) -> None:
        """The run's end (or its stop on a signal) is always saved; after a NaN the previous
        epoch's checkpoint is the one to keep."""
        if (
            self.writer is not None
            and nonfinite is None
            and (
                self.state.epoch,
                self.state.step,
            )
            != self.saved
        ):
            self._write(self.snapshot())

    def close(self) -> None:
        if self.writer is not None:
            if self.best_pending is not None:  # a NaN, an error: the best weights so far kept
                self.writer.submit({"best.pt": self.best_pending})
            self.writer.close()  # the process never exits with a checkpoint half-written


def _log_epoch(rec: EpochRecord, epochs: int) -> None:
    log.info(
        "epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  "
        "val_acc %.4f  lr %.3g  %.0f img/s",
        rec.epoch,
        epochs,
        rec.train_loss,
        rec.train_acc,
        rec.val_loss,
        rec.val_acc,
        rec.lr,
        rec.images_per_s,
    )


@dataclass
class _Loop:
    """What the epochs gave: their records, the signal agreed on, a NaN/Inf, a rule's stop."""

    records: List[EpochRecord] = field(default_factory=list)
    agreed: int = 0  # the signal the loop stopped on (under DDP maybe another rank's)
    nonfinite: Optional[NonFiniteLoss] = None
    stop: Optional[Stop] = None
    # the best epoch's record and weights (a CPU copy), for the final evaluation
    best: Optional[EpochRecord] = None
    best_weights: Optional[Dict[str, torch.Tensor]] = None


def _epochs(
    cfg, ctx, parts, state, out: _Loop, ckpts, signals, loggers, rules, keep_logits, keep_best
):
    """The loop over epochs (runner/loop.py fit): log, metrics, loggers, rules, checkpoints."""
    t = cfg.trainer
    try:
        for rec in fit(
            _net(parts.model, parts.device, t.compile),
            parts.optimizer,
            parts.train_loader,
            parts.val_loader,
            epochs=t.epochs,
            device=parts.device,
            loss_fn=parts.loss_fn,
            scheduler=parts.scheduler,
            opts=loop_options(cfg, parts, state, keep_logits),
            state=state,
            stop_signal=signals.signal if signals else None,
        ):
            out.agreed = rec.signum or out.agreed
            out.records.append(rec)
            if rec.best and keep_best:
                out.best = rec
                out.best_weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in parts.model.state_dict().items()
                }
            if rec.interrupted:  # a signal mid-epoch: save the half-done epoch exactly
                ckpts.interrupted()
                break
            _log_epoch(rec, t.epochs)
            if loggers is not None:  # None: a check's run, which writes no metrics either
                ctx.run.write_metrics(state.history)
                loggers.log_epoch(rec)
            out.stop = _first_stop(rules, rec)
            ckpts.epoch_done(rec, out.stop)
            if out.stop:
                log.info("%s", out.stop.reason)
                break
    except NonFiniteLoss as e:
        out.nonfinite = e
        log.error("%s", e)
    ckpts.run_end(out.nonfinite)


def train_run(
    cfg,
    ctx: Context,
    data: Optional[DataBundle] = None,
    zero_inputs: bool = False,
    save_checkpoints: bool = True,
    keep_val_logits: bool = False,
    model: Optional[torch.nn.Module] = None,
    write_metrics: bool = True,
    callbacks: Sequence[Callback] = (),
    before: Optional[Callable[[Parts], Any]] = None,
) -> TrainResult:
    """Train and evaluate per the config; checkpoint as it goes; resume when asked.

    `callbacks`: the stage's own rules (overfit's loss target, tune's pruner), each called
    with every finished epoch's record; the first that returns a Stop (or a reason) ends the
    run after that epoch (TrainResult.stop_reason, .pruned). trainer.early_stopping_patience
    adds one after them. `before(parts)`: a stage's look at the built run just before the
    first epoch (overfit's lr range test); it must leave the model and optimiser as they are.
    """
    parts = build_parts(cfg, ctx, data, model, zero_inputs)
    state, resumed_from = start_state(cfg, ctx, parts, save_checkpoints)
    if before is not None:
        before(parts)
    if write_metrics:  # the header at once: a run that dies in epoch 1 still has metrics.csv
        ctx.run.write_metrics(state.history)
    t = cfg.trainer
    rules = list(callbacks)
    if t.early_stopping_patience:
        on = best_epoch_on(str(cfg.get("metric") or "accuracy"))
        rules.append(early_stopping(t.early_stopping_patience, on.replace("_", " ")))
    log.info(
        "train: %d epochs%s",
        t.epochs,
        f" (continuing after epoch {state.epoch})" if state.epoch else "",
    )
    signals = _StopOnSignal() if save_checkpoints else None
    ckpts = Checkpoints(cfg, ctx, parts, state, save_checkpoints)
    # logger=tensorboard/mlflow mirror each epoch; metrics.csv is written whatever they are
    loggers = (
        build_loggers(cfg, ctx.run, ctx.original_cwd, parts.data, parts.model)
        if write_metrics
        else None
    )
    out = _Loop()
    try:
        _epochs(
            cfg,
            ctx,
            parts,
            state,
            out,
            ckpts,
            signals,
            loggers,
            rules,
            keep_val_logits,
            keep_best=write_metrics,
        )
    finally:
        ckpts.close()
        if signals is not None:
            signals.restore()
        # this process's signal, else the one the ranks agreed on (another rank's, under DDP):
        # every rank then leaves the same way (rank 0's checkpoint, Interrupted, exit 128+signal)
        signum = (signals.signum if signals is not None else None) or out.agreed or None
        if loggers:
            loggers.close("FAILED" if out.nonfinite else "KILLED" if signum else "FINISHED")
    records, nonfinite, stop = out.records, out.nonfinite, out.stop
    if signum and state.epoch < t.epochs and not (stop or nonfinite):
        raise Interrupted(signum, ctx.run.path, state.epoch, state.step)
    finished = [r for r in records if not r.interrupted]
    # the final model, scored once: val per class, and the test split (never seen before)
    final = final_evaluation(cfg, ctx, parts, out) if write_metrics and not zero_inputs else None
    return TrainResult(
        data=parts.data,
        model=parts.model,
        device=parts.device,
        history=list(state.history),
        last=finished[-1] if finished else None,
        state=state,
        nonfinite=nonfinite,
        resumed_from=resumed_from,
        params=count_params(parts.model),
        stop_reason=stop.reason if stop else None,
        records=finished,
        pruned=bool(stop and stop.pruned),
        compile_s=_compile_s(records),
        final=final,
        imbalance=parts.imbalance,
    )


def final_evaluation(cfg, ctx: Context, parts: Parts, out: _Loop) -> Optional[Dict[str, Any]]:
    """The final model of a run, evaluated once after training, per class: the best epoch's
    weights (those best.pt holds and the run's headline reports), on the val split (its
    confusion matrix from that epoch's evaluation) and on the test split, which nothing read
    before: no early stopping, best epoch, ladder, study, squeeze or recipe selects on it.

    {"epoch", "val": block, "test": block or None} (runner/metrics.py evaluation_block)."""
    from runner.loop import evaluate

    data, model, device = parts.data, parts.model, parts.device
    best = out.best
    weights = out.best_weights
    if best is None and weights is None and out.nonfinite is not None:
        return None  # a NaN/Inf before any good epoch: no model to score
    if weights is None and state_has_best(ctx):  # resumed after the best epoch: its best.pt
        try:
            weights = load_checkpoint(ctx.run.path / "checkpoints" / "best.pt")["model"]
        except (ConfigError, KeyError, OSError) as e:
            log.warning("final evaluation: best.pt not read (%s); the last weights", e)
    opts = loop_options(cfg, parts, LoopState(step=1), False)
    keep = None
    last = out.records[-1] if out.records else None
    if weights is not None and (best is None or best is not last):  # the model holds the last
        keep = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        model.load_state_dict(weights)
    try:
        if best is not None and best.val_confusion is not None:
            val = evaluation_block(best.val_confusion, best.val_loss, data.class_names)
        else:
            ev = evaluate(
                model, parts.val_loader, device, opts.precision, False, 0, opts.channels_last
            )
            val = evaluation_block(_confusion(ev, data.num_classes), ev.loss, data.class_names)
        test = None
        if data.test is not None and len(data.test):
            log.info("test: scoring the final model once on %d test images", len(data.test))
            ev = evaluate(
                model,
                test_loader(cfg, data, device),
                device,
                opts.precision,
                False,
                0,
                opts.channels_last,
            )
            test = evaluation_block(_confusion(ev, data.num_classes), ev.loss, data.class_names)
            if val.get("acc") is not None and test.get("acc") is not None:
                test["val_test_gap"] = val["acc"] - test["acc"]
    finally:
        if keep is not None:
            model.load_state_dict(keep)
    return {"epoch": best.epoch if best is not None else None, "val": val, "test": test}


def state_has_best(ctx: Context) -> bool:
    return bool(ctx.run.enabled) and (ctx.run.path / "checkpoints" / "best.pt").is_file()


def _confusion(ev, num_classes: int) -> torch.Tensor:
    if ev.confusion is not None:
        return ev.confusion
    return torch.zeros(num_classes, num_classes, dtype=torch.long)


def test_loader(cfg, data: DataBundle, device: torch.device):
    """The test split's loader: as validation's (no augmentation, every example once)."""
    d, t = cfg.data, cfg.trainer
    di = from_env()
    workers = d.num_workers if d.num_workers is not None else default_workers(device)
    return data.test.loader(
        t.batch_size * 2,
        False,
        cfg.seed,
        device,
        train=False,
        num_workers=workers,
        rank=di.rank,
        world=di.world,
    )


def _checkpoint_files(last, best) -> dict:
    """What one write holds: best.pt (when a new best is pending) before last.pt, so that a
    kill between the two leaves an older last.pt, whose resume recomputes that best."""
    return {**({"best.pt": best} if best is not None else {}), "last.pt": last}


def _compile_s(records: List[EpochRecord]) -> Optional[float]:
    """torch.compile's time: the first step's time less an ordinary step's (None: not timed)."""
    r = next((r for r in records if r.first_step_s), None)
    if r is None:
        return None
    typical = max(0.0, r.epoch_s - r.first_step_s) / max(1, r.step - 1)
    return max(0.0, r.first_step_s - typical)


def sub_run(
    cfg,
    ctx: Context,
    path: Path,
    overrides: List[str],
    title: Optional[str] = None,
    mark_epoch: Optional[float] = None,
    lineage: Optional[Dict[str, Any]] = None,
    summary_extra: Optional[Dict[str, Any]] = None,
):
    """One training run of a stage's own (a ladder rung, a seed rerun) in `path`, with its
    own summary, checks and report; returns (TrainResult, summary).

    `lineage`: where this sub-run came from (written to its lineage.json and shown as "Started
    from"); None: the stage's own (ctx.lineage), no lineage.json. `summary_extra`: summary
    fields over the trained config's (e.g. {"stage": "squeeze", "role": "seed rerun"}: a
    stage that reruns another stage's config labels the run as its own)."""
    from runner import jobs

    jobs.check(cfg, ctx.original_cwd, overrides)  # its own keys, not the parent command's
    if not ctx.run.enabled:
        return _sub_run(cfg, ctx, path, overrides, title, mark_epoch, lineage, summary_extra)
    with owned(path):  # a rung's own directory, below the parent's: this process's too
        return _sub_run(cfg, ctx, path, overrides, title, mark_epoch, lineage, summary_extra)


def _sub_run(cfg, ctx, path, overrides, title, mark_epoch, lineage, summary_extra):
    from runner.stages.finish import finish

    sub = Context(
        run=RunDir(path, enabled=ctx.run.enabled),
        original_cwd=ctx.original_cwd,
        overrides=list(overrides),
        lineage=ctx.lineage if lineage is None else lineage,
    )
    if lineage is not None:
        sub.run.write_json("lineage.json", lineage)
    # the config it trains with, as a plain run's config.yaml (from=<this dir> reads it)
    sub.run.write_text("config.yaml", OmegaConf.to_yaml(cfg))
    res = train_run(cfg, sub)
    verdicts = [finite_verdict(cfg, res)]
    summary = summary_of(cfg, sub, res, verdicts, extra=summary_extra)
    finish(
        cfg,
        sub,
        result_of(
            res,
            verdicts,
            summary,
            mark_epoch=mark_epoch,
            title=title or f"{summary.get('stage') or cfg.stage.name}: {path.name}",
        ),
    )
    return res, summary


def finite_verdict(cfg, res: TrainResult) -> Verdict:
    """train.finite on a finished run: did it stop on a NaN/Inf loss, and at which step."""
    from runner.checks.training import train_finite

    return run_check(
        cfg.checks, "train.finite", lambda s: train_finite(res.nonfinite, res.state.step)
    )


def summary_of(
    cfg,
    ctx: Context,
    res: TrainResult,
    verdicts: List[Verdict],
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    h = res.history
    last = h[-1] if h else {}
    metric = str(cfg.get("metric") or "accuracy")
    best = best_row(h, best_epoch_on(metric))
    ips = [r.images_per_s for r in res.records if r.images_per_s]
    counts = {s: sum(v.status == s for v in verdicts) for s in ("pass", "warn", "fail", "skip")}
    out = {
        "stage": cfg.stage.name,
        "name": cfg.name,
        "status": "nonfinite"
        if res.nonfinite
        else ("stopped_early" if res.stop_reason else "finished"),
        "val_acc": last.get("val_acc"),
        "val_loss": last.get("val_loss"),
        "train_loss": last.get("train_loss"),
        "train_acc": last.get("train_acc"),
        "best_val_loss": best.get("val_loss"),
        "best_val_acc": best.get("val_acc"),
        "best_val_balanced_acc": best.get("val_balanced_acc"),
        "best_val_macro_f1": best.get("val_macro_f1"),
        "best_epoch": best.get("epoch"),
        # what validation selects on (the config's `metric`; runner/jobs.py selection_value)
        "metric": metric,
        "epochs": res.state.epoch,
        "steps": res.state.step,
        "params": res.params,
        "images_per_s": float(np.median(ips)) if ips else None,
        "wall_s": res.state.wall_s,
        "compile_s": res.compile_s,
        "checks": counts,
        "checks_failed": [v.name for v in verdicts if v.status == "fail"],
        "model": cfg.model._target_ or cfg.model.name,
        "data": {
            "kind": res.data.kind,
            "num_train": len(res.data.train),
            "num_val": len(res.data.val),
            "num_test": len(res.data.test) if res.data.test is not None else 0,
            "num_classes": res.data.num_classes,
            "in_chans": res.data.in_chans,
            "image_size": res.data.image_size,
            "interpolation": res.data.interpolation,
            "mean": list(res.data.mean),
            "std": list(res.data.std),
            "norm_from": res.data.norm_from,
            "fingerprint": res.data.fingerprint,
            "class_names": res.data.class_names,
        },
        # trainer.imbalance: the setting, what it came to, the training class counts
        "imbalance": res.imbalance.record() if res.imbalance is not None else None,
        "resumed_from": res.resumed_from,
        "stop_reason": res.stop_reason,
        # files left out of training because they could not be read (name -> error)
        "unreadable_files": res.data.unreadable_files(),
        "error": str(res.nonfinite) if res.nonfinite else None,
        "human_baseline": cfg.human_baseline,
        "provenance": provenance(cfg, ctx.original_cwd, res.data, res.device),
        "run_dir": str(ctx.run.path),
    }
    out.update(final_summary(res.final))
    out.update(extra or {})
    return out


def best_row(history: List[Dict[str, Any]], best_on: str = "val_loss") -> Dict[str, Any]:
    """The history row of the best epoch as the loop chose it (LoopOptions.best_on): the
    smallest val loss, or the largest balanced accuracy / macro-F1; {} when none was evaluated."""
    col = {"balanced_accuracy": "val_balanced_acc", "macro_f1": "val_macro_f1"}.get(best_on)
    key = col or "val_loss"
    ok = [r for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not ok:
        return {}
    return max(ok, key=lambda r: r[key]) if col else min(ok, key=lambda r: r[key])


def final_summary(final: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """summary.json's fields of the final model's evaluation (final_evaluation): `evaluation`
    (val and test, per class, with confusion matrices), and the test split's headline
    figures `test_acc`, `test_loss` and `test` (n, accuracy with its 95% Wilson interval,
    balanced accuracy, macro-F1, the val-test gap); null test figures when there is none."""
    if not final:
        return {}
    t = final.get("test")
    head = (
        {
            k: t.get(k)
            for k in ("n", "acc", "acc_ci95", "loss", "balanced_acc", "macro_f1", "val_test_gap")
        }
        if t
        else None
    )
    return {
        "evaluation": final,
        "test_acc": t.get("acc") if t else None,
        "test_loss": t.get("loss") if t else None,
        "test": head,
    }


def per_class_rows(final: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """per_class.csv: one row per split and class of the final model's evaluation."""
    rows = []
    for split in ("val", "test"):
        block = (final or {}).get(split)
        for r in (block or {}).get("per_class", []):
            rows.append({"split": split, **r})
    return rows


def evaluation_sections(final: Optional[Dict[str, Any]]) -> List[Any]:
    """The report's section on the final model: per split its figures, per class precision,
    recall, F1 and support, and the confusion matrix (rows: true class, columns: predicted)."""
    from runner.report import KeyValues, Section, Table, Text

    if not final:
        return []
    blocks: List[Any] = [
        Text(
            (
                f"The final model (epoch {final['epoch']}, the weights best.pt holds), "
                if final.get("epoch") is not None
                else "The adopted model (an ensemble: its members' averaged logits), "
            )
            + "evaluated once after training. The test split is scored here only: nothing "
            "selected on it.",
            note=True,
        )
    ]

    def f(x):
        return None if x is None else round(float(x), 4)

    for split in ("val", "test"):
        b = final.get(split)
        if not b:
            continue
        lo, hi = b.get("acc_ci95") or [None, None]
        figures = {
            "images": b["n"],
            "accuracy": f(b.get("acc")),
            "95% interval (Wilson)": f"{lo:.4f} - {hi:.4f}" if lo is not None else None,
            "loss": f(b.get("loss")),
            "balanced accuracy": f(b.get("balanced_acc")),
            "macro-F1": f(b.get("macro_f1")),
        }
        if "val_test_gap" in b:
            figures["val - test accuracy"] = f(b["val_test_gap"])
        blocks += [Text(split, strong=True), KeyValues(figures)]
        blocks.append(
            Table(
                [
                    {
                        "class": r["class"],
                        "precision": f(r["precision"]),
                        "recall": f(r["recall"]),
                        "F1": f(r["f1"]),
                        "support": r["support"],
                    }
                    for r in b["per_class"]
                ],
                ["class", "precision", "recall", "F1", "support"],
                sortable=True,
            )
        )
        names = [r["class"] for r in b["per_class"]]
        if len(names) <= 30:
            blocks.append(
                Table(
                    [
                        {"true \\ predicted": n, **{m: c for m, c in zip(names, row)}}
                        for n, row in zip(names, b["confusion"])
                    ],
                    ["true \\ predicted", *names],
                )
            )
    return [Section("Final model: per-class evaluation", blocks, anchor="evaluation")]


def result_of(
    res: TrainResult, verdicts: List[Verdict], summary: Dict[str, Any], **more: Any
) -> StageResult:
    """A training stage's StageResult: its verdicts and summary, the run's curves, and
    whether it stopped on a NaN/Inf loss; `more`: sections, files, title, mark_epoch."""
    sections = list(more.pop("sections", [])) + evaluation_sections(res.final)
    files = dict(more.pop("files", {}))
    rows = per_class_rows(res.final)
    if rows:
        files.setdefault("per_class.csv", Rows(rows, PER_CLASS_COLUMNS))
    return StageResult(
        verdicts,
        summary,
        history=list(res.history),
        exit_code=1 if res.nonfinite else None,
        sections=sections,
        files=files,
        **more,
    )


PER_CLASS_COLUMNS = ["split", "class", "precision", "recall", "f1", "support"]
