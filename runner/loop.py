"""The one train/eval loop, used by every stage and by every check that trains.

It takes plain arguments (model, loaders, optimiser, ...) and never sees the config.
`fit` is a generator: it yields one EpochRecord per epoch, and the caller (a stage)
decides what to write and when to checkpoint. That keeps this file free of I/O.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional

import torch
from torch import nn

from runner.distributed import all_reduce_sum, barrier
from runner.errors import NonFiniteLoss


@dataclass
class EvalResult:
    loss: float
    acc: float
    n: int
    logits: Optional[torch.Tensor] = None  # [n, C] on CPU, when asked for
    targets: Optional[torch.Tensor] = None


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
    val_logits: Optional[torch.Tensor] = None
    val_targets: Optional[torch.Tensor] = None
    best: bool = False  # best val loss so far
    stop_reason: Optional[str] = None  # set on the last record when stopping early
    interrupted: bool = False  # stopped mid-epoch on request; not a finished epoch
    # the signal the ranks agreed to stop on (the largest any rank got), on the record after
    # which the loop stops for it; 0: none. A rank that got no signal itself learns it here.
    signum: int = 0


@dataclass
class LoopState:
    """What a checkpoint must hold to continue the loop exactly."""

    epoch: int = 0
    step: int = 0
    wall_s: float = 0.0
    best_val_loss: float = math.inf
    evals_since_best: int = 0
    history: List[dict] = field(default_factory=list)
    # a half-done epoch (after SIGINT/SIGTERM): batches done and their running sums
    batch_in_epoch: int = 0
    partial_loss_sum: float = 0.0
    partial_correct: int = 0
    partial_seen: int = 0
    partial_s: float = 0.0


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, precision: str = "fp32",
             keep_logits: bool = False, epoch: int = 0, channels_last: bool = False) -> EvalResult:
    """Loss and accuracy over the *whole* loader (recipe: evaluate on the full val set)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    all_logits, all_targets = [], []
    for x, y in loader.epoch(epoch):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
        if keep_logits:
            all_logits.append(logits.cpu())
            all_targets.append(y.cpu())
    model.train(was_training)
    # DDP: each rank saw its share of the validation set; sum over ranks
    totals = all_reduce_sum(torch.stack([loss_sum, correct.double(),
                                         torch.tensor(float(n), device=device, dtype=torch.float64)]))
    n = int(totals[2])
    if n == 0:
        return EvalResult(math.nan, math.nan, 0)
    return EvalResult(
        float(totals[0]) / n, float(totals[1]) / n, n,
        torch.cat(all_logits) if keep_logits else None,
        torch.cat(all_targets) if keep_logits else None,
    )


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


# The loop reads device values on the host only at check points: every `check_every` steps
# (more often when steps are slow, so checks come about every `check_seconds` and a signal
# is acted on well within torchrun's/a scheduler's grace period before SIGKILL) and at
# each epoch end, before the epoch's record (and so its checkpoint) leaves the loop. Between
# them the finiteness of the loss is accumulated on the device, so a CUDA step never waits
# for the host. Under DDP each check is one all_reduce(MAX) that every rank joins at the same
# step, so all ranks stop together, for a NaN on any rank or a signal to any rank.
CHECK_EVERY = 50
CHECK_SECONDS = 2.0


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


def _local_signum(stop_requested) -> int:
    """The signal behind `stop_requested` when it says (train_run's handler has `.signum`)."""
    return int(getattr(getattr(stop_requested, "__self__", None), "signum", None) or 0)


def _sync_flags(watch: _Watch, stop_local: bool, signum: int) -> _Flags:
    """The loop's one host read of device state at a check point (one all_reduce under DDP)."""
    import torch.distributed as dist

    dev = watch.bad.device
    host = torch.tensor([float(stop_local), float(signum), time.perf_counter() - watch.t0],
                        dtype=torch.float64, device=dev)
    t = torch.cat([host, watch.bad.double().view(1), (-watch.clean.double()).view(1)])
    if _world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    stop, sig, seconds, bad, neg_clean = t.tolist()
    value = math.nan
    if bad and bool(watch.bad):  # failure path only: a second read is fine
        value = float(watch.value)
    return _Flags(stop > 0, int(sig), bad > 0, watch.steps_before + int(-neg_clean) + 1, value,
                  seconds)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader,
    val_loader,
    *,
    epochs: int,
    device: torch.device,
    loss_fn: Optional[nn.Module] = None,
    scheduler=None,
    mixup=None,
    precision: str = "fp32",
    channels_last: bool = False,
    grad_clip: float = 0.0,
    eval_every: int = 1,
    early_stopping_patience: int = 0,
    max_steps_per_epoch: int = 0,
    keep_val_logits: bool = False,
    progress: bool = False,
    state: Optional[LoopState] = None,
    stop_requested: Optional[Callable[[], bool]] = None,
    check_every: int = CHECK_EVERY,
    check_seconds: float = CHECK_SECONDS,
) -> Iterator[EpochRecord]:
    """Train for `epochs` epochs (continuing from `state`), yielding a record per epoch.

    Raises NonFiniteLoss when a loss was NaN/Inf, naming its epoch and step. The loss is
    checked on the device every step but read on the host only at check points (every
    `check_every` steps, more often when steps are slow so that they come about every
    `check_seconds`, and at every epoch end), so a bad loss stops the run at the next check
    point, naming its first bad step, always before the epoch's record is yielded (and
    checkpointed). When `stop_requested()` turns true (a signal), the loop stops after the
    current step (under DDP: at the next check point, on every rank together) and yields one
    record with `interrupted=True`; `state` then describes the half-done epoch exactly (its
    sums over all ranks), so a checkpoint of it resumes to the same result.
    """
    state = state or LoopState()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" and device.type == "cuda" else None
    steps_per_epoch = len(train_loader)
    if max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    show = progress and sys.stderr.isatty()
    ddp = _world_size() > 1
    interval = max(1, int(check_every))

    def asked() -> bool:
        return stop_requested is not None and bool(stop_requested())

    def check(watch: _Watch, bar) -> _Flags:
        """A check point: read (and under DDP agree on) the flags; raise on a bad loss."""
        nonlocal interval
        flags = _sync_flags(watch, asked(), _local_signum(stop_requested))
        if flags.bad:
            if bar is not None:
                bar.close()
            raise NonFiniteLoss(epoch + 1, flags.first_bad_step, "loss", flags.value,
                                found_at=state.step)
        steps = state.step - watch.steps_before
        if check_seconds > 0 and steps > 0 and flags.seconds > 0:  # same values on every rank
            interval = max(1, min(int(check_every), int(check_seconds * steps / flags.seconds)))
        return flags

    for epoch in range(state.epoch, epochs):
        model.train()
        t0 = time.perf_counter()
        start = state.batch_in_epoch
        # a half-done epoch's sums are over all ranks (see below): rank 0 carries them on
        carry = _rank() == 0
        loss_sum = torch.tensor(state.partial_loss_sum if carry else 0.0, device=device,
                                dtype=torch.float64)
        correct = torch.tensor(state.partial_correct if carry else 0, device=device,
                               dtype=torch.float64)
        seen = torch.tensor(float(state.partial_seen if carry else 0), device=device,
                            dtype=torch.float64)
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{epochs}",
                       leave=False)
        interrupted = False
        stop_signum = 0
        i = start
        watch = _Watch(device, state.step)
        next_check = start + interval
        for x, y in train_loader.epoch(epoch, start):
            if i >= steps_per_epoch:
                break
            # forward
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            hard_y = y
            if mixup is not None:
                x, y = mixup(x, y)
            with autocast(device, precision):
                logits = model(x)
                loss = loss_fn(logits, y)
            # a NaN/Inf loss is noted on the device; the next check point stops the run
            watch.update(loss)
            # backward, update
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
            state.step += 1
            i += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=state.step)
            # accumulate on device: no host sync per step
            loss_sum += loss.detach().double() * len(hard_y)
            correct += (logits.detach().argmax(1) == hard_y).sum()
            seen += len(hard_y)
            if bar is not None:
                bar.update(1)
            # one process reads its own (host) stop flag every step; DDP ranks only at the
            # shared check points, where they agree. The epoch's last step: its end checks.
            if i < steps_per_epoch and (i >= next_check or (not ddp and asked())):
                flags = check(watch, bar)
                watch, next_check = _Watch(device, state.step), i + interval
                if flags.stop:
                    interrupted, stop_signum = True, flags.signum
                    break
        if bar is not None:
            bar.close()
        train_s = time.perf_counter() - t0
        if interrupted:
            state.batch_in_epoch = i
            # DDP: the checkpoint (rank 0's state) must hold every rank's share of the sums
            part = all_reduce_sum(torch.stack([loss_sum, correct, seen])).tolist()
            state.partial_loss_sum, state.partial_correct = part[0], int(part[1])
            state.partial_seen, state.partial_s = int(part[2]), state.partial_s + train_s
            state.wall_s += train_s
            rec = EpochRecord(epoch=epoch, step=state.step, train_loss=math.nan,
                              train_acc=math.nan, val_loss=math.nan, val_acc=math.nan,
                              lr=current_lr(optimizer), wall_s=state.wall_s, epoch_s=train_s,
                              images_per_s=0.0, evaluated=False, interrupted=True,
                              signum=stop_signum)
            try:
                yield rec
            except GeneratorExit:  # the caller saved its checkpoint (rank 0) and stops
                barrier()  # no rank exits (and so has torchrun end the others) before that
                raise
            barrier()
            return
        # epoch end: always a check point, before anything of this epoch leaves the loop
        end_flags = check(watch, None)
        stop_at_end = end_flags.stop
        if scheduler is not None:
            scheduler.step(epoch + 1)
        # DDP: every rank trained on its share of each global batch
        totals = all_reduce_sum(torch.stack([loss_sum, correct, seen]))
        n_seen = max(float(totals[2]), 1.0)
        epoch_s = train_s + state.partial_s
        state.epoch = epoch + 1
        state.wall_s += train_s
        state.batch_in_epoch, state.partial_loss_sum, state.partial_correct = 0, 0.0, 0
        state.partial_seen, state.partial_s = 0, 0.0

        # evaluate on the whole validation set
        last = epoch + 1 == epochs
        evaluated = (epoch + 1) % eval_every == 0 or last
        ev = evaluate(model, val_loader, device, precision, keep_val_logits, epoch, channels_last) \
            if evaluated else EvalResult(math.nan, math.nan, 0)
        rec = EpochRecord(
            epoch=epoch + 1, step=state.step,
            train_loss=float(totals[0]) / n_seen, train_acc=float(totals[1]) / n_seen,
            val_loss=ev.loss, val_acc=ev.acc, lr=current_lr(optimizer), wall_s=state.wall_s,
            epoch_s=epoch_s, images_per_s=n_seen / epoch_s if epoch_s > 0 else 0.0,
            evaluated=evaluated, val_logits=ev.logits, val_targets=ev.targets,
            signum=end_flags.signum if stop_at_end else 0,
        )
        if evaluated:
            if ev.loss < state.best_val_loss:
                state.best_val_loss, state.evals_since_best, rec.best = ev.loss, 0, True
            else:
                state.evals_since_best += 1
            if early_stopping_patience and state.evals_since_best >= early_stopping_patience:
                rec.stop_reason = (f"early stopping: val loss has not improved for "
                                   f"{state.evals_since_best} evaluations")
        state.history.append({k: getattr(rec, k) for k in (
            "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "wall_s",
            "epoch_s", "images_per_s")})
        yield rec
        if rec.stop_reason:
            return
        # one process: a signal during evaluation/checkpointing stops here; under DDP only
        # the agreed flag counts (a later signal is agreed on at the next check point)
        if stop_at_end or (not ddp and asked()):
            barrier()  # rank 0 has written this epoch's checkpoint before any rank exits
            return
