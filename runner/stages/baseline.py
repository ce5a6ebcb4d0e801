"""stage=baseline: recipe stage 2 - end-to-end skeleton, dumb baselines, sanity checks.

Fixed seed, no augmentation, no regularisation, no LR decay (conf/stage/baseline.yaml),
a small model, the whole validation set, and the checks that earn trust in the setup.
"""
from __future__ import annotations

import itertools
import logging

from runner.checks.training import seed_determinism, train_finite
from runner.models import build_model
from runner.optim import build_optimizer
from runner.stages.common import (Context, build_data_for, finish, loaders, setup_runtime,
                                  summary_of, timed, train_run)

log = logging.getLogger("runner")


def run(cfg, ctx: Context) -> int:
    device = setup_runtime(cfg)
    data = build_data_for(cfg, ctx)
    checks = cfg.checks
    verdicts = []

    if checks.seed_determinism.get("enabled", True):
        log.info("check: seed.determinism (two short runs from seed %d)", cfg.seed)
        train_loader, _ = loaders(cfg, data, device)
        batches = list(itertools.islice(train_loader.epoch(0), int(checks.seed_determinism.get("steps", 3))))
        verdicts.append(timed(
            seed_determinism,
            lambda: build_model(cfg.model, data.num_classes, data.in_chans, ctx.original_cwd).to(device),
            lambda m: build_optimizer(cfg.optim, m), batches, cfg.seed))

    log.info("train: the skeleton, end to end")
    res = train_run(cfg, ctx, data=data)
    if checks.train_finite.get("enabled", True):
        verdicts.append(train_finite(res.nonfinite, res.state.step))

    code = finish(cfg, ctx, res, verdicts, summary_of(cfg, ctx, res, verdicts))
    return 1 if res.nonfinite else code
