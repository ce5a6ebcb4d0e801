"""The one train/eval loop, used by every stage and by every check that trains.

It takes plain arguments (model, loaders, optimiser, ...) and never sees the config.
`step` is one optimiser step (the checks that train call it too), `train_one_epoch` one pass
over the training loader, `evaluate` one pass over the whole validation loader, and `fit`
the epochs: a generator that yields one EpochRecord per epoch, so the caller (a stage)
decides what to write, when to checkpoint and when to stop. This file does no I/O.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from runner.distributed import all_reduce_sum, barrier
from runner.errors import NonFiniteLoss
from runner.output import METRIC_COLUMNS


@dataclass
class EvalResult:
    loss: float
    acc: float
    n: int
    logits: torch.Tensor | None = None  # [n, C] on CPU, when asked for
    targets: torch.Tensor | None = None
    # [C, C] counts on CPU, rows the true class, columns the predicted (runner/metrics.py)
    confusion: torch.Tensor | None = None

    @property
    def balanced_acc(self) -> float:
        from runner.metrics import balanced_accuracy

        return (
            balanced_accuracy(self.confusion) if self.n and self.confusion is not None else math.nan
        )

    @property
    def macro_f1(self) -> float:
        from runner.metrics import macro_f1

        return macro_f1(self.confusion) if self.n and self.confusion is not None else math.nan


@dataclass
class EpochRecord:
    epoch: int  # 1-based: the number of epochs finished
    step: int  # optimiser steps so far
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    wall_s: float  # training wall time so far (carried over a resume)
    epoch_s: float
    images_per_s: float
    evaluated: bool = True
    val_logits: torch.Tensor | None = None
    val_targets: torch.Tensor | None = None
    # balanced accuracy and macro-F1 of the evaluation (runner/metrics.py)
    val_balanced_acc: float = math.nan
    val_macro_f1: float = math.nan
    val_confusion: torch.Tensor | None = None  # [C, C] on CPU (EvalResult.confusion)
    # best so far on LoopOptions.best_on (val loss by default)
    best: bool = False
    evals_since_best: int = 0  # evaluations since the best (early stopping reads it)
    interrupted: bool = False  # stopped mid-epoch on request; not a finished epoch
    # the signal the ranks agreed to stop on (the largest any rank got), on the record after
    # which the loop stops for it; 0: none. A rank that got no signal itself learns it here.
    signum: int = 0
    first_step_s: float = 0.0  # the run's first step, timed (LoopOptions.time_first_step)


@dataclass
class Stop:
    """What a callback returns to end a run after an epoch: why, and whether a pruner did it."""

    reason: str
    pruned: bool = False


# a stage's per-epoch callback: None to go on, a Stop (or just its reason) to end the run
Callback = Callable[[EpochRecord], "Stop | str | None"]


@dataclass
class LoopState:
    """What a checkpoint must hold to continue the loop exactly."""

    epoch: int = 0
    step: int = 0
    wall_s: float = 0.0
    best_val_loss: float = math.inf
    evals_since_best: int = 0
    # the best epoch's -metric when LoopOptions.best_on is balanced_accuracy or macro_f1
    best_score: float = math.inf
    history: list[dict] = field(default_factory=list)
    # a half-done epoch (after SIGINT/SIGTERM): batches done and their running sums
    batch_in_epoch: int = 0
    partial_loss_sum: float = 0.0
    partial_correct: int = 0
    partial_seen: int = 0
    partial_s: float = 0.0


# The loop reads device values on the host only at check points: every `check_every` steps
# (more often when steps are slow, so checks come about every `check_seconds` and a signal
# is acted on well within torchrun's/a scheduler's grace period before SIGKILL) and at
# each epoch end, before the epoch's record (and so its checkpoint) leaves the loop. Between
# them the finiteness of the loss is accumulated on the device, so a CUDA step never waits
# for the host. Under DDP each check is one all_reduce(MAX) that every rank joins at the same
# step, so all ranks stop together, for a NaN on any rank or a signal to any rank.
CHECK_EVERY = 50
CHECK_SECONDS = 2.0


@dataclass
class LoopOptions:
    """How the loop trains; every field is a plain setting with the loop's default."""

    mixup: Callable | None = None  # timm Mixup: (x, y) -> (mixed x, soft y)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler on CUDA)
    channels_last: bool = False
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    eval_every: int = 1  # epochs between evaluations (and always after the last)
    max_steps_per_epoch: int = 0  # 0 = a full pass
    keep_val_logits: bool = False  # EpochRecord.val_logits/val_targets
    progress: bool = False  # a tqdm bar on a terminal
    check_every: int = CHECK_EVERY  # steps between check points
    check_seconds: float = CHECK_SECONDS  # ... or fewer, so that they come about this often
    time_first_step: bool = False  # torch.compile: time the first step (it compiles)
    # what the best epoch (EpochRecord.best: best.pt, early stopping) is chosen on: val_loss,
    # or balanced_accuracy / macro_f1 (the largest)
    best_on: str = "val_loss"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Step(NamedTuple):
    loss: torch.Tensor  # detached, on the device
    logits: torch.Tensor  # detached
    updated: bool  # False when `before_update` vetoed the update


def step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable,
    *,
    amp=None,
    scaler=None,
    grad_clip: float = 0.0,
    before_update: Callable[[torch.Tensor, torch.Tensor], bool] | None = None,
) -> Step:
    """One optimiser step on (x, y): forward, backward, update; no host sync.

    `before_update(loss, logits)` (a check inspecting the step) runs after the backward pass
    and returns False to skip the update. `amp`: an autocast context; `scaler`: fp16's."""
    # forward
    with amp if amp is not None else contextlib.nullcontext():
        logits = model(x)
        loss = loss_fn(logits.float(), y)
    # backward
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if before_update is not None and not before_update(loss.detach(), logits.detach()):
        return Step(loss.detach(), logits.detach(), False)
    # update
    if scaler is not None:
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return Step(loss.detach(), logits.detach(), True)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    precision: str = "fp32",
    keep_logits: bool = False,
    epoch: int = 0,
    channels_last: bool = False,
) -> EvalResult:
    """Loss and accuracy over the *whole* loader (recipe: evaluate on the full val set)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    confusion = None  # [C*C] counts, made at the first batch (C: the logits' width)
    n = 0
    all_logits, all_targets = [], []
    for x, y in loader.epoch(epoch):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        pred = logits.argmax(1)
        correct += (pred == y).sum()
        c = logits.shape[1]
        if confusion is None:
            confusion = torch.zeros(c * c, device=device, dtype=torch.long)
        confusion += torch.bincount(y.long() * c + pred, minlength=c * c)[: c * c]
        n += len(y)
        if keep_logits:  # to the host without waiting for the device (pinned memory on CUDA)
            all_logits.append(logits.to("cpu", non_blocking=True))
            all_targets.append(y.to("cpu", non_blocking=True))
    model.train(was_training)
    if keep_logits and device.type == "cuda":
        torch.cuda.synchronize(device)  # the copies to the host are complete before use
    # DDP: each rank saw its share of the validation set; sum over ranks
    totals = all_reduce_sum(
        torch.stack(
            [loss_sum, correct.double(), torch.tensor(float(n), device=device, dtype=torch.float64)]
        )
    )
    n = int(totals[2])
    if n == 0:
        return EvalResult(math.nan, math.nan, 0)
    if confusion is not None:  # DDP: every rank's counts (a rank with no batch has none)
        confusion = all_reduce_sum(confusion)
        c = math.isqrt(confusion.numel())
        confusion = confusion.view(c, c).cpu()
    return EvalResult(
        float(totals[0]) / n,
        float(totals[1]) / n,
        n,
        torch.cat(all_logits) if keep_logits and all_logits else None,
        torch.cat(all_targets) if keep_logits and all_targets else None,
        confusion,
    )


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


class _Watch:
    """Device-side record of the steps since the last check: was a loss non-finite, where first."""

    def __init__(self, device: torch.device, steps_before: int):
        self.bad = torch.zeros((), device=device, dtype=torch.bool)
        self.clean = torch.zeros((), device=device, dtype=torch.long)  # steps before the first bad
        self.value = torch.zeros((), device=device, dtype=torch.float32)  # the first bad loss
        self.steps_before = steps_before  # optimiser steps done before this window
        self.t0 = time.perf_counter()

    def update(self, loss: torch.Tensor) -> None:
        """Device ops only: no host sync."""
        loss = loss.detach().float()
        self.value = torch.where(self.bad, self.value, loss)
        self.bad = self.bad | ~torch.isfinite(loss)
        self.clean += ~self.bad


@dataclass
class _Flags:
    stop: bool  # a rank was asked to stop
    signum: int  # the (largest) signal number a rank got; 0 when unknown or none
    bad: bool  # a loss since the last check was NaN/Inf on some rank
    first_bad_step: int  # global step of the first one
    value: float  # that loss on this rank (NaN when it was another rank's)
    seconds: float  # the slowest rank's time since the last check


def _world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _sync_flags(watch: _Watch, stop_local: bool, signum: int) -> _Flags:
    """The loop's one host read of device state at a check point (one all_reduce under DDP)."""
    import torch.distributed as dist

    dev = watch.bad.device
    host = torch.tensor(
        [float(stop_local), float(signum), time.perf_counter() - watch.t0],
        dtype=torch.float64,
        device=dev,
    )
    t = torch.cat([host, watch.bad.double().view(1), (-watch.clean.double()).view(1)])
    if _world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    stop, sig, seconds, bad, neg_clean = t.tolist()
    value = math.nan
    if bad and bool(watch.bad):  # failure path only: a second read is fine
        value = float(watch.value)
    return _Flags(
        stop > 0, int(sig), bad > 0, watch.steps_before + int(-neg_clean) + 1, value, seconds
    )


class _CheckPoints:
    """When the loop reads device state on the host, and that read (see CHECK_EVERY)."""

    def __init__(
        self, stop_signal: Callable[[], int] | None, check_every: int, check_seconds: float
    ):
        self.stop_signal = stop_signal
        self.check_every, self.check_seconds = max(1, int(check_every)), check_seconds
        self.interval = self.check_every  # adapts to the step time, kept across epochs
        self.ddp = _world_size() > 1

    def signal(self) -> int:
        """This process's stop request: the signal number, or 0."""
        return int(self.stop_signal() or 0) if self.stop_signal is not None else 0

    def due(self, i: int, next_check: int) -> bool:
        # one process reads its own (host) stop flag every step; DDP ranks only at the shared
        # check points, where they agree
        return i >= next_check or (not self.ddp and self.signal() != 0)

    def check(self, watch: _Watch, epoch: int, step_now: int) -> _Flags:
        """Read (and under DDP agree on) the flags; raise on a bad loss."""
        sig = self.signal()
        flags = _sync_flags(watch, sig != 0, sig)
        if flags.bad:
            raise NonFiniteLoss(
                epoch + 1, flags.first_bad_step, "loss", flags.value, found_at=step_now
            )
        steps = step_now - watch.steps_before
        if self.check_seconds > 0 and steps > 0 and flags.seconds > 0:  # same on every rank
            self.interval = max(
                1, min(self.check_every, int(self.check_seconds * steps / flags.seconds))
            )
        return flags


@dataclass
class _EpochSums:
    """One pass over the training loader: device sums, and whether a stop request cut it."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: torch.Tensor
    seconds: float
    batches: int  # batches done in this epoch (from its start)
    interrupted: bool = False
    signum: int = 0  # the agreed signal: for an interrupted epoch, or at the epoch-end check
    first_step_s: float = 0.0


def train_one_epoch(
    model: nn.Module,
    optimizer,
    loader,
    *,
    epoch: int,
    epochs: int,
    device: torch.device,
    loss_fn: Callable,
    scheduler,
    opts: LoopOptions,
    state: LoopState,
    checks: _CheckPoints,
) -> _EpochSums:
    """Train `epoch` (0-based) from batch `state.batch_in_epoch` on; advances `state.step`.

    Stops after a step when a check point finds a stop request (`interrupted`); raises
    NonFiniteLoss at the check point after a NaN/Inf loss. The sums are this rank's."""
    model.train()
    t0 = time.perf_counter()
    steps_per_epoch = len(loader)
    if opts.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, opts.max_steps_per_epoch)
    amp = autocast(device, opts.precision)
    scaler = (
        torch.amp.GradScaler(device.type)
        if opts.precision == "fp16" and device.type == "cuda"
        else None
    )
    # a half-done epoch's sums are over all ranks (see fit): rank 0 carries them on
    carry = _rank() == 0
    f64 = {"device": device, "dtype": torch.float64}
    loss_sum = torch.tensor(state.partial_loss_sum if carry else 0.0, **f64)
    correct = torch.tensor(float(state.partial_correct if carry else 0), **f64)
    seen = torch.tensor(float(state.partial_seen if carry else 0), **f64)
    out = _EpochSums(loss_sum, correct, seen, 0.0, state.batch_in_epoch)
    bar = None
    if opts.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(
            total=steps_per_epoch,
            initial=out.batches,
            desc=f"epoch {epoch + 1}/{epochs}",
            leave=False,
        )
    watch = _Watch(device, state.step)
    next_check = out.batches + checks.interval
    try:
        for x, y in loader.epoch(epoch, out.batches):
            if out.batches >= steps_per_epoch:
                break
            # inputs
            if opts.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            hard_y = y
            if opts.mixup is not None:
                x, y = opts.mixup(x, y)
            # forward, backward, update (timed once when it compiles the model)
            t_step = time.perf_counter() if opts.time_first_step and state.step == 0 else None
            s = step(
                model, optimizer, x, y, loss_fn, amp=amp, scaler=scaler, grad_clip=opts.grad_clip
            )
            if t_step is not None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                out.first_step_s = time.perf_counter() - t_step
            state.step += 1
            out.batches += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=state.step)
            # note a NaN/Inf loss and the epoch's sums on the device: no host sync per step
            watch.update(s.loss)
            loss_sum += s.loss.double() * len(hard_y)
            correct += (s.logits.argmax(1) == hard_y).sum()
            seen += len(hard_y)
            if bar is not None:
                bar.update(1)
            # a check point (the epoch's last step is checked by its end, in fit)
            if out.batches < steps_per_epoch and checks.due(out.batches, next_check):
                flags = checks.check(watch, epoch, state.step)
                watch, next_check = _Watch(device, state.step), out.batches + checks.interval
                if flags.stop:
                    out.interrupted, out.signum = True, flags.signum
                    break
        if not out.interrupted:  # epoch end: always a check point
            flags = checks.check(watch, epoch, state.step)
            out.signum = flags.signum if flags.stop else 0
    finally:
        if bar is not None:
            bar.close()
    out.seconds = time.perf_counter() - t0
    return out


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader,
    val_loader,
    *,
    epochs: int,
    device: torch.device,
    loss_fn: nn.Module | None = None,
    scheduler=None,
    opts: LoopOptions | None = None,
    state: LoopState | None = None,
    stop_signal: Callable[[], int] | None = None,
) -> Iterator[EpochRecord]:
    """Train for `epochs` epochs (continuing from `state`), yielding a record per epoch.

    Raises NonFiniteLoss when a loss was NaN/Inf, naming its epoch and step: the loss is
    checked on the device every step and read on the host at check points (CHECK_EVERY), so
    always before the epoch's record is yielded (and checkpointed). When `stop_signal()`
    returns a signal number (not 0), the loop stops after the current step (under DDP: at the
    next check point, on every rank together) and yields one record with `interrupted=True`;
    `state` then describes the half-done epoch exactly (its sums over all ranks), so a
    checkpoint of it resumes to the same result. The caller ends the run early by closing
    the generator (a `break`) after any record.
    """
    opts = opts or LoopOptions()
    state = state or LoopState()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    checks = _CheckPoints(stop_signal, opts.check_every, opts.check_seconds)

    for epoch in range(state.epoch, epochs):
        # train one epoch (or the rest of a half-done one)
        ep = train_one_epoch(
            model,
            optimizer,
            train_loader,
            epoch=epoch,
            epochs=epochs,
            device=device,
            loss_fn=loss_fn,
            scheduler=scheduler,
            opts=opts,
            state=state,
            checks=checks,
        )
        sums = torch.stack([ep.loss_sum, ep.correct, ep.seen])

        # stopped mid-epoch: hand back the half-done epoch, exactly, for its checkpoint
        if ep.interrupted:
            # DDP: the checkpoint (rank 0's state) must hold every rank's share of the sums
            part = all_reduce_sum(sums).tolist()
            state.batch_in_epoch = ep.batches
            state.partial_loss_sum, state.partial_correct = part[0], int(part[1])
            state.partial_seen, state.partial_s = int(part[2]), state.partial_s + ep.seconds
            state.wall_s += ep.seconds
            rec = EpochRecord(
                epoch=epoch,
                step=state.step,
                train_loss=math.nan,
                train_acc=math.nan,
                val_loss=math.nan,
                val_acc=math.nan,
                lr=current_lr(optimizer),
                wall_s=state.wall_s,
                epoch_s=ep.seconds,
                images_per_s=0.0,
                evaluated=False,
                interrupted=True,
                signum=ep.signum,
                first_step_s=ep.first_step_s,
            )
            try:
                yield rec
            except GeneratorExit:  # the caller saved its checkpoint (rank 0) and stops
                barrier()  # no rank exits (and so has torchrun end the others) before that
                raise
            barrier()
            return

        # the epoch is done: schedule, totals over all ranks, loop state
        if scheduler is not None:
            scheduler.step(epoch + 1)
        totals = all_reduce_sum(sums)  # DDP: every rank trained on its share of each batch
        n_seen = max(float(totals[2]), 1.0)
        epoch_s = ep.seconds + state.partial_s
        state.epoch, state.wall_s = epoch + 1, state.wall_s + ep.seconds
        state.batch_in_epoch, state.partial_loss_sum, state.partial_correct = 0, 0.0, 0
        state.partial_seen, state.partial_s = 0, 0.0

        # evaluate on the whole validation set
        evaluated = (epoch + 1) % opts.eval_every == 0 or epoch + 1 == epochs
        ev = (
            evaluate(
                model,
                val_loader,
                device,
                opts.precision,
                opts.keep_val_logits,
                epoch,
                opts.channels_last,
            )
            if evaluated
            else EvalResult(math.nan, math.nan, 0)
        )

        # the record, and whether it is the best so far
        rec = EpochRecord(
            epoch=epoch + 1,
            step=state.step,
            train_loss=float(totals[0]) / n_seen,
            train_acc=float(totals[1]) / n_seen,
            val_loss=ev.loss,
            val_acc=ev.acc,
            val_balanced_acc=ev.balanced_acc,
            val_macro_f1=ev.macro_f1,
            val_confusion=ev.confusion,
            lr=current_lr(optimizer),
            wall_s=state.wall_s,
            epoch_s=epoch_s,
            images_per_s=n_seen / epoch_s if epoch_s > 0 else 0.0,
            evaluated=evaluated,
            val_logits=ev.logits,
            val_targets=ev.targets,
            signum=ep.signum,
            first_step_s=ep.first_step_s,
        )
        if evaluated:
            if opts.best_on == "val_loss":
                better = ev.loss < state.best_val_loss
            else:  # the largest balanced accuracy / macro-F1 (kept negated: smaller is better)
                score = -(ev.balanced_acc if opts.best_on == "balanced_accuracy" else ev.macro_f1)
                better = score < state.best_score
                if better:
                    state.best_score = score
            state.best_val_loss = min(state.best_val_loss, ev.loss)
            if better:
                state.evals_since_best, rec.best = 0, True
            else:
                state.evals_since_best += 1
        rec.evals_since_best = state.evals_since_best
        state.history.append({k: getattr(rec, k) for k in METRIC_COLUMNS})
        yield rec

        # a stop request: the one agreed at the epoch end, or (one process) one that came
        # during evaluation/checkpointing; under DDP a later one waits for the next check
        if ep.signum or (not checks.ddp and checks.signal()):
            barrier()  # rank 0 has written this epoch's checkpoint before any rank exits
            return
