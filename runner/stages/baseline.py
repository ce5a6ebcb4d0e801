"""stage=baseline: recipe stage 2 - end-to-end skeleton, dumb baselines, sanity checks.

Fixed seed, no augmentation, no regularisation, no LR decay (conf/stage/baseline.yaml),
a small model, the whole validation set, and the checks that earn trust in the setup:
cheap checks on the untrained model first, then the real run, then the checks that need
it, then the evidence a person looks at (prediction dynamics, confusion, top losses).
Every check is switched and tuned under `checks.<name with '.' -> '_'>`.
"""
from __future__ import annotations

import copy
import itertools
import logging
import math
from typing import Dict, List, Tuple

import torch

from runner.checks import Verdict, skip
from runner.checks.baselines import input_independent, majority_accuracy, overfit_batch
from runner.checks.gradients import batch_independence, grads_flow
from runner.checks.init import init_bias, init_loss
from runner.checks.inputs import input_stats
from runner.checks.training import loss_decreases, seed_determinism, train_finite
from runner.errors import ConfigError
from runner.models import build_model
from runner.optim import build_optimizer
from runner.stages.common import (Context, build_data_for, build_model_for, finish, loaders,
                                  set_seed, setup_runtime, summary_of, timed, train_run)

log = logging.getLogger("runner")

# the checks this stage runs, in order (stable names from DESIGN.md)
BASELINE_CHECKS = (
    "input.stats", "init.loss", "init.bias", "train.grads_flow", "train.batch_independence",
    "baseline.overfit_batch", "seed.determinism", "train.finite",
    "baseline.input_independent", "train.loss_decreases",
)


def settings_key(check: str) -> str:
    """checks.<key> for a check name: `init.loss` -> `init_loss`."""
    return check.replace(".", "_")


def check_settings(checks_cfg) -> None:
    """Unknown keys under checks.<name> (typos) are config errors, all reported at once."""
    from runner.config import ChecksConfig

    defaults = ChecksConfig()
    problems = []
    for key in [settings_key(c) for c in BASELINE_CHECKS] + ["predictions"]:
        allowed = set(getattr(defaults, key))
        given = set(checks_cfg[key].keys()) if checks_cfg.get(key) is not None else set()
        for k in sorted(given - allowed):
            problems.append(f"checks.{key}.{k} is not a setting of this check; expected one of "
                            f"{', '.join(sorted(allowed))}")
    if problems:
        raise ConfigError(problems)


def run(cfg, ctx: Context) -> int:
    check_settings(cfg.checks)

    def on(check: str) -> bool:
        return bool(settings(check).get("enabled", True))

    def settings(check: str):
        return cfg.checks[settings_key(check)]

    device = setup_runtime(cfg)
    data = build_data_for(cfg, ctx)
    train_loader, _ = loaders(cfg, data, device)
    pool = int(max(settings("init.loss").get("examples", 256), settings("input.stats").get("show", 32),
                   settings("baseline.overfit_batch").get("examples", 16), cfg.trainer.batch_size))
    x, y = first_examples(train_loader, pool)
    model = build_model_for(cfg, data, ctx, device)
    prior = data.class_prior().to(device)
    verdicts: List[Verdict] = []
    first_batch = (x[:cfg.trainer.batch_size], y[:cfg.trainer.batch_size])

    # look at the exact tensors that go into model(x)
    if on("input.stats"):
        s = settings("input.stats")
        log.info("check: input.stats (the first training batch, as model(x) sees it)")
        verdicts.append(timed(input_stats, first_batch[0], first_batch[1], data.mean, data.std,
                              data.class_names, max_abs_warn=float(s.max_abs_warn),
                              max_abs_fail=float(s.max_abs_fail), show=int(s.show)))

    # the untrained model: loss at init, then init the final bias to the log prior
    n_init = int(settings("init.loss").get("examples", 256))
    if on("init.loss"):
        log.info("check: init.loss (untrained model on %d examples vs log C)", min(n_init, len(y)))
        verdicts.append(timed(init_loss, model, x[:n_init], y[:n_init], prior,
                              tolerance=float(settings("init.loss").tolerance)))
    if on("init.bias"):
        log.info("check: init.bias (final bias := log class prior, for the real run)")
        verdicts.append(timed(init_bias, model, x[:n_init], y[:n_init], prior,
                              tolerance=float(settings("init.bias").tolerance)))

    # backprop as a probe: every parameter learns, examples stay apart
    if on("train.grads_flow"):
        log.info("check: train.grads_flow (%d optimiser steps on a copy of the model)",
                 int(settings("train.grads_flow").steps))
        verdicts.append(timed(grads_flow, model, *first_batch, steps=int(settings("train.grads_flow").steps),
                              make_optimizer=lambda m: build_optimizer(cfg.optim, m)))
    if on("train.batch_independence"):
        k = int(settings("train.batch_independence").examples)
        log.info("check: train.batch_independence (backprop example i's output to %d inputs)", k)
        verdicts.append(timed(batch_independence, model, x[:k], examples=(0, k // 2, -1)))

    # overfit one small batch
    if on("baseline.overfit_batch"):
        s = settings("baseline.overfit_batch")
        log.info("check: baseline.overfit_batch (%d examples, up to %d steps)", int(s.examples), int(s.steps))
        verdicts.append(timed(overfit_batch, model, x[:int(s.examples)], y[:int(s.examples)],
                              steps=int(s.steps), lr=float(s.lr), loss_below=float(s.loss_below)))

    # fix the seed: two short runs give the same losses
    if on("seed.determinism"):
        log.info("check: seed.determinism (two short runs from seed %d)", cfg.seed)
        steps = int(settings("seed.determinism").get("steps", 3))
        batches = list(itertools.islice(train_loader.epoch(0), steps))
        verdicts.append(timed(
            seed_determinism,
            lambda: build_model(cfg.model, data.num_classes, data.in_chans, ctx.original_cwd).to(device),
            lambda m: build_optimizer(cfg.optim, m), batches, cfg.seed))

    log.info("train: the skeleton, end to end")
    res = train_run(cfg, ctx, data=data, model=model, keep_val_logits=on_predictions(cfg))
    if on("train.finite"):
        log.info("check: train.finite (no NaN/Inf loss in the real run)")
        verdicts.append(timed(train_finite, res.nonfinite, res.state.step))

    # dumb baselines the real model must beat
    majority = majority_accuracy(data.train.labels, data.val.labels, data.num_classes)
    zero = None
    if on("baseline.input_independent"):
        log.info("check: baseline.input_independent (the same model trained on zeroed inputs)")
        v, zero = _input_independent(cfg, ctx, data, device, res, majority)
        verdicts.append(v)
    if on("train.loss_decreases"):
        log.info("check: train.loss_decreases (training loss over the run)")
        init_v = next((v for v in verdicts if v.name == "init.bias" and v.status != "skip"), None) \
            or next((v for v in verdicts if v.name == "init.loss"), None)
        initial = init_v.value if init_v is not None and isinstance(init_v.value, float) else None
        verdicts.append(timed(loss_decreases, [r["train_loss"] for r in res.history], initial=initial,
                              min_drop=float(settings("train.loss_decreases").min_drop)))

    sections = []
    baselines = {"majority_acc": majority, "zero_input_acc": zero, "human_baseline": cfg.human_baseline,
                 "model_acc": res.history[-1]["val_acc"] if res.history else None}
    sections.append(("Baselines", _baselines_table(baselines)))
    if on_predictions(cfg) and res.records:
        log.info("report: prediction dynamics, confusion matrix, top-loss validation examples")
        sections += predictions_sections(ctx, data, res, settings("predictions"))
    sections.append(("Check cost", _cost_table(verdicts)))
    extra = {"baselines": baselines,
             "check_seconds": {v.name: round(v.seconds, 3) for v in verdicts if v.seconds is not None}}
    code = finish(cfg, ctx, res, verdicts, summary_of(cfg, ctx, res, verdicts, extra), sections)
    return 1 if res.nonfinite else code


def on_predictions(cfg) -> bool:
    return bool(cfg.checks.predictions.get("enabled", True))


def first_examples(loader, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first n training examples exactly as the loop would feed them (epoch 0 order)."""
    xs, ys, got = [], [], 0
    for xb, yb in loader.epoch(0):
        xs.append(xb)
        ys.append(yb)
        got += len(yb)
        if got >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _input_independent(cfg, ctx, data, device, res, majority) -> Tuple[Verdict, float]:
    """Train the same model (same seed, same bias init) on zeroed inputs; compare on val."""
    import time

    t0 = time.perf_counter()
    s = cfg.checks.baseline_input_independent
    if res.nonfinite or not res.history:
        v = skip("baseline.input_independent", "the real run did not finish, nothing to compare")
        return v, math.nan
    zcfg = copy.deepcopy(cfg)
    if s.get("epochs"):
        zcfg.trainer.epochs = min(int(s.epochs), cfg.trainer.epochs)
    log.info("input_independent: %d epoch(s) on zeroed inputs", zcfg.trainer.epochs)
    set_seed(cfg.seed)
    zmodel = build_model(cfg.model, data.num_classes, data.in_chans, ctx.original_cwd).to(device)
    if cfg.checks.init_bias.get("enabled", True):
        _set_log_prior_bias(zmodel, data.class_prior())
    zres = train_run(zcfg, ctx, data=data, zero_inputs=True, save_checkpoints=False,
                     model=zmodel, write_metrics=False)
    zero_acc = zres.history[-1]["val_acc"] if zres.history else math.nan
    zero_loss = zres.history[-1]["val_loss"] if zres.history else math.nan
    last = res.history[-1]
    v = input_independent(last["val_acc"], last["val_loss"], zero_acc, zero_loss, majority,
                          cfg.human_baseline, margin=float(s.margin))
    v.seconds = time.perf_counter() - t0
    return v, zero_acc


def _set_log_prior_bias(model, prior) -> None:
    from runner.models import final_linear

    head = final_linear(model)
    if head is not None and head.bias is not None and head.out_features == len(prior):
        with torch.no_grad():
            head.bias.copy_(prior.double().clamp_min(1e-8).log().to(head.bias))


def predictions_sections(ctx, data, res, s) -> List[Tuple[str, str]]:
    """Prediction dynamics, confusion matrix and top-loss examples, saved by the output module."""
    from runner.checks.predictions import (confusion, confusion_figure, fixed_examples,
                                           prediction_dynamics, top_loss_figure, top_losses)
    from runner.report import esc, images, table

    recs = [r for r in res.records if r.val_logits is not None]
    if not recs:
        return []
    targets = recs[-1].val_targets
    logits = recs[-1].val_logits
    out = []
    idx = fixed_examples(targets, data.num_classes, int(s.examples))
    fig = prediction_dynamics([r.epoch for r in recs], [r.val_logits[idx].float().softmax(1) for r in recs],
                              targets, idx, data.class_names)
    out.append(("Prediction dynamics", images([ctx.run.save_figure(fig, "prediction_dynamics")])
                + "<p class='sub'>Predicted probabilities of fixed validation examples after each "
                  "epoch: they should settle on the true class, not jitter or collapse.</p>"))
    cm = confusion(logits, targets, data.num_classes)
    out.append(("Confusion matrix", images([ctx.run.save_figure(confusion_figure(cm, data.class_names),
                                                                  "confusion_matrix")])))
    top, losses = top_losses(logits, targets, int(s.top_losses))
    aligned = len(targets) == len(data.val) and bool((data.val.labels.cpu()[top] == targets[top]).all())
    if aligned and top:
        xs, _ = data.val.get(top)
        fig = top_loss_figure(xs, data.mean, data.std, top, losses, logits, targets, data.class_names)
        names = data.class_names
        rows = [{"val index": i, "file": data.val.name(i), "true": names[int(targets[i])],
                 "predicted": names[int(logits[i].argmax())], "loss": l} for i, l in zip(top, losses)]
        out.append(("Top-loss validation examples",
                    images([ctx.run.save_figure(fig, "top_losses")]) + table(rows)))
    else:
        out.append(("Top-loss validation examples",
                    f"<p class='sub'>{esc('validation predictions do not line up with the split (unreadable files skipped?); images not shown')}</p>"))
    return out


def _baselines_table(b: Dict) -> str:
    from runner.report import table

    rows = [{"what": "majority class (always the most frequent training class)", "val acc": b["majority_acc"]},
            {"what": "same model, zeroed inputs", "val acc": b["zero_input_acc"]},
            {"what": "model", "val acc": b["model_acc"]},
            {"what": "human (human_baseline)", "val acc": b["human_baseline"]}]
    return table(rows)


def _cost_table(verdicts: List[Verdict]) -> str:
    from runner.report import table

    rows = [{"check": v.name, "seconds": v.seconds} for v in verdicts if v.seconds is not None]
    total = sum(r["seconds"] for r in rows)
    return table(rows + [{"check": "total", "seconds": total}])
