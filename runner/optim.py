"""Optimiser, schedule and loss through timm's factories (cfg -> flat kwargs -> create_*)."""

from __future__ import annotations

from typing import Optional, Tuple

from torch import nn


def optimizer_kwargs(cfg) -> dict:
    """The `optim` node as timm.optim.create_optimizer_v2 keyword arguments."""
    kw = dict(opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name in ("sgd", "momentum", "rmsprop"):
        kw["momentum"] = cfg.momentum
    if cfg.betas is not None:
        kw["betas"] = tuple(cfg.betas)
    if cfg.eps is not None:
        kw["eps"] = cfg.eps
    return kw


def build_optimizer(cfg, model: nn.Module):
    """timm's optimizer for the `optim` node. `optim.fused` null (auto): torch's fused kernel
    where the optimizer has one for these parameters (Adam, AdamW, SGD on CPU and CUDA),
    else the optimizer's own default; true: fused or a config error; false: never."""
    from timm.optim import create_optimizer_v2

    kw = optimizer_kwargs(cfg)
    fused = cfg.get("fused")
    if fused is False:
        return create_optimizer_v2(model, **kw)
    try:
        return create_optimizer_v2(model, **kw, fused=True)
    except (TypeError, RuntimeError) as e:  # no `fused` argument, or not for these params
        if fused:
            from runner.errors import ConfigError

            raise ConfigError(
                f"optim.fused=true but optim.name={cfg.name!r} has no fused kernel for this "
                f"model's parameters ({str(e).splitlines()[0]}); set optim.fused=null (auto) "
                "or false"
            ) from None
    return create_optimizer_v2(model, **kw)


def build_scheduler(cfg, optimizer, epochs: int, steps_per_epoch: int):
    """A timm scheduler over *this* run's epochs (recipe: don't trust someone else's), or None."""
    if cfg.name == "none":
        return None
    from timm.scheduler import create_scheduler_v2

    sched, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.name,
        num_epochs=epochs,
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
        decay_epochs=cfg.decay_epochs,
        decay_rate=cfg.decay_rate,
        step_on_epochs=cfg.step_on_epochs,
        updates_per_epoch=steps_per_epoch,
    )
    return sched


def build_loss_and_mixup(
    aug, num_classes: int, class_weights=None
) -> Tuple[nn.Module, Optional[object]]:
    """Cross-entropy (with label smoothing), or soft-target CE with timm's Mixup/CutMix;
    `class_weights` (runner/imbalance.py, trainer.imbalance=class_weights) weigh either."""
    if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(
            mixup_alpha=aug.mixup_alpha,
            cutmix_alpha=aug.cutmix_alpha,
            label_smoothing=aug.label_smoothing,
            num_classes=num_classes,
        )
        if class_weights is not None:
            from runner.imbalance import SoftTargetCE

            return SoftTargetCE(class_weights), mixup
        return SoftTargetCrossEntropy(), mixup
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=aug.label_smoothing), None
