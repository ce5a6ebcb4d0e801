"""The lr range test (runner/checks/lr_range.py) from a config: in stage=overfit, from Python
(`runner.api.lr_range`) and from the shell (`python -m runner lr-range OVERRIDES`).

    import runner.api
    v = runner.api.lr_range(["data=digits", "model=tiny_cnn"])
    v.status, v.details["suggestion"], v.details["rule"]

The sweep runs on a copy of the model with a fresh optimiser of the configured kind
(`optim.*`, its lr replaced step by step), on the training batches the run's loader gives
(augmentation included; mixup/cutmix left out: plain cross-entropy with the run's label
smoothing). The global RNG state is restored afterwards, so the run trains exactly as it
would have without the test.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("runner")


def check_for(cfg, model, train_loader, device):
    """train.lr_range's verdict for `model` and the run's `train_loader` (run_check: a skip
    when checks.train_lr_range.enabled=false)."""
    import torch
    from torch import nn

    from runner.checks.lr_range import lr_range
    from runner.optim import build_optimizer
    from runner.stages.protocol import run_check

    def one(s):
        log.info(
            "check: train.lr_range (%d steps, lr %g to %g, on a copy of the model)",
            int(s.steps),
            float(s.start_lr),
            float(s.end_lr),
        )
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the run's own RNG stream untouched
            return lr_range(
                model,
                lambda m: build_optimizer(cfg.optim, m),
                train_loader.epoch,
                float(cfg.optim.lr),
                loss_fn=nn.CrossEntropyLoss(label_smoothing=float(cfg.aug.label_smoothing)),
                steps=int(s.steps),
                start_lr=float(s.start_lr),
                end_lr=float(s.end_lr),
                beta=float(s.beta),
                diverge=float(s.diverge),
                factor=float(s.factor),
                min_drop=float(s.min_drop),
            )

    v = run_check(cfg.checks, "train.lr_range", one)
    if v.status != "skip" or v.details:
        log.info("train.lr_range: %s: %s", v.status, v.message)
    return v


def lr_range(overrides: Sequence[str] = (), cwd: Optional[str] = None):
    """The lr range test for the config `python -m runner OVERRIDES` composes (validated: a
    bad one raises runner.ConfigError): builds its data, model and training loader and returns
    the Verdict (`.details["suggestion"]`, `["valley"]`, `["rule"]`, `.figures["curve"]`)."""
    from runner import jobs
    from runner.output import RunDir
    from runner.stages.common import build_data_for, build_model_for, loaders, setup_runtime
    from runner.stages.protocol import Context

    p = jobs.plan(None, list(overrides), cwd=cwd)
    cfg = p.cfg
    ctx = Context(run=RunDir(Path(p.cwd), enabled=False), original_cwd=p.cwd)
    device = setup_runtime(cfg)
    data = build_data_for(cfg, ctx)
    model = build_model_for(cfg, data, ctx, device)
    train_loader, _ = loaders(cfg, data, device)
    return check_for(cfg, model, train_loader, device)


def lr_range_main(argv: Sequence[str]) -> int:
    """`python -m runner lr-range [--plot FILE] OVERRIDES`: print the suggestion, save the plot."""
    p = argparse.ArgumentParser(
        prog="python -m runner lr-range",
        description="An lr range test (an exponential lr sweep on a copy of the model) for the "
        "config the overrides compose; prints the suggested optim.lr and saves the loss-vs-lr "
        "plot.",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for a run (data=, model=)")
    p.add_argument("--plot", default="lr_range.png", help="the figure (default lr_range.png)")
    try:
        a = p.parse_args(list(argv))
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    v = lr_range(a.overrides)  # a ConfigError: commands.run_command says it and exits 2
    d = v.details
    print(f"train.lr_range: {v.status.upper()}: {v.message}")
    if "suggestion" in d:
        print(f"suggested optim.lr={d['suggestion']:.2g} ({d['rule']})")
        print(f"valley: {d['valley']:.2g} ({d['valley_rule']})")
        print(
            "a study centred on it (two decades): python -m runner -m stage=tune "
            f"'optim.lr=tag(log, interval({d['suggestion'] / 10:.2g}, "
            f"{d['suggestion'] * 10:.2g}))'"
        )
    fig = v.figures.get("curve")
    if fig is not None:
        from runner.errors import RunFileError

        out = Path(a.plot)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=100)
        except OSError as e:
            raise RunFileError(out, e, "the suggestion above is complete") from e
        print(f"plot: {out}")
    sys.stdout.flush()
    return 0
