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

from runner.distributed import all_reduce_sum
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


def _nonfinite_anywhere(loss: torch.Tensor) -> bool:
    """Is the loss NaN/Inf here or (under DDP) on any rank? All ranks must stop together."""
    import torch.distributed as dist

    bad = (~torch.isfinite(loss.detach())).double()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        all_reduce_sum(bad)
    return bool(bad > 0)


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
) -> Iterator[EpochRecord]:
    """Train for `epochs` epochs (continuing from `state`), yielding a record per epoch.

    Raises NonFiniteLoss at the step where the loss stops being finite. When
    `stop_requested()` turns true (a signal), the loop stops after the current step and
    yields one record with `interrupted=True`; `state` then describes the half-done epoch
    exactly, so a checkpoint of it resumes to the same result.
    """
    state = state or LoopState()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" and device.type == "cuda" else None
    steps_per_epoch = len(train_loader)
    if max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    show = progress and sys.stderr.isatty()

    for epoch in range(state.epoch, epochs):
        model.train()
        t0 = time.perf_counter()
        start = state.batch_in_epoch
        loss_sum = torch.tensor(state.partial_loss_sum, device=device, dtype=torch.float64)
        correct = torch.tensor(state.partial_correct, device=device, dtype=torch.float64)
        seen = torch.tensor(float(state.partial_seen), device=device, dtype=torch.float64)
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{epochs}",
                       leave=False)
        interrupted = False
        i = start
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
            # a NaN/Inf loss stops the run here, naming where (recipe: fail loudly, not silently)
            if _nonfinite_anywhere(loss):
                if bar is not None:
                    bar.close()
                raise NonFiniteLoss(epoch + 1, state.step + 1, "loss", float(loss.detach()))
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
            # accumulate on device: no host sync per step beyond the finiteness test
            loss_sum += loss.detach().double() * len(hard_y)
            correct += (logits.detach().argmax(1) == hard_y).sum()
            seen += len(hard_y)
            if bar is not None:
                bar.update(1)
            if stop_requested is not None and stop_requested() and i < steps_per_epoch:
                interrupted = True
                break
        if bar is not None:
            bar.close()
        train_s = time.perf_counter() - t0
        if interrupted:
            state.batch_in_epoch = i
            state.partial_loss_sum, state.partial_correct = float(loss_sum), int(correct)
            state.partial_seen, state.partial_s = int(seen), state.partial_s + train_s
            state.wall_s += train_s
            yield EpochRecord(epoch=epoch, step=state.step, train_loss=math.nan, train_acc=math.nan,
                              val_loss=math.nan, val_acc=math.nan, lr=current_lr(optimizer),
                              wall_s=state.wall_s, epoch_s=train_s, images_per_s=0.0,
                              evaluated=False, interrupted=True)
            return
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
        if stop_requested is not None and stop_requested():
            return
