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
from typing import Iterator, List, Optional

import torch
from torch import nn

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


@dataclass
class LoopState:
    """What a checkpoint must hold to continue the loop exactly."""

    epoch: int = 0
    step: int = 0
    wall_s: float = 0.0
    best_val_loss: float = math.inf
    evals_since_best: int = 0
    history: List[dict] = field(default_factory=list)


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
    if n == 0:
        return EvalResult(math.nan, math.nan, 0)
    return EvalResult(
        float(loss_sum) / n, float(correct) / n, n,
        torch.cat(all_logits) if keep_logits else None,
        torch.cat(all_targets) if keep_logits else None,
    )


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


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
) -> Iterator[EpochRecord]:
    """Train for `epochs` epochs (continuing from `state.epoch`), yielding a record per epoch.

    Raises NonFiniteLoss at the step where the loss stops being finite.
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
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        for i, (x, y) in enumerate(train_loader.epoch(epoch)):
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
            if not torch.isfinite(loss.detach()):
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
            if scheduler is not None:
                scheduler.step_update(num_updates=state.step)
            # accumulate on device: no host sync per step beyond the finiteness test
            loss_sum += loss.detach().double() * len(hard_y)
            correct += (logits.detach().argmax(1) == hard_y).sum()
            seen += len(hard_y)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if scheduler is not None:
            scheduler.step(epoch + 1)
        train_s = time.perf_counter() - t0
        state.epoch = epoch + 1
        state.wall_s += train_s

        # evaluate on the whole validation set
        last = epoch + 1 == epochs
        evaluated = (epoch + 1) % eval_every == 0 or last
        ev = evaluate(model, val_loader, device, precision, keep_val_logits, epoch, channels_last) \
            if evaluated else EvalResult(math.nan, math.nan, 0)
        rec = EpochRecord(
            epoch=epoch + 1, step=state.step,
            train_loss=float(loss_sum) / max(seen, 1), train_acc=float(correct) / max(seen, 1),
            val_loss=ev.loss, val_acc=ev.acc, lr=current_lr(optimizer), wall_s=state.wall_s,
            epoch_s=train_s, images_per_s=seen / train_s if train_s > 0 else 0.0,
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
