"""stage=overfit (recipe stage 3): a proven model big enough to drive training loss to ~0.

Before training, an lr range test on a copy of the model (`train.lr_range`: is the configured
optim.lr near the suggested one?). Trains the stage config until the training loss reaches
the check's target (`checks.overfit_train_fit.train_loss_target`) or the epoch budget ends,
checks `overfit.train_fit` and reports the train/val gap.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from runner.stages import train
from runner.stages.protocol import Context, StageResult, run_check

log = logging.getLogger("runner")


# no settings of its own: what counts as "fitted" (and so where the run stops) is the
# threshold of its check, checks.overfit_train_fit.train_loss_target / train_acc_target
Params = train.Params
TRAINS = True
FROM_PREVIOUS = True
outcome = train.outcome
headline = train.headline


def gap_of(summary: dict[str, Any]) -> dict[str, Any]:
    """Train/val gap at the last epoch: accuracy (train - val) and loss (val - train)."""
    ta, va = summary.get("train_acc"), summary.get("val_acc")
    tl, vl = summary.get("train_loss"), summary.get("val_loss")
    ok = lambda *xs: all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)
    return {"gap_acc": ta - va if ok(ta, va) else None, "gap_loss": vl - tl if ok(tl, vl) else None}


def run(cfg, ctx: Context) -> StageResult:
    from runner.checks.training import train_finite, train_fit
    from runner.lrfind import check_for
    from runner.report import KeyValues, Section, Text
    from runner.stages.common import result_of, summary_of, train_run

    fit = cfg.checks.overfit_train_fit
    before = []  # the lr range test, on a copy of the built model before its first epoch
    res = train_run(
        cfg,
        ctx,
        callbacks=[until_train_loss(float(fit.train_loss_target))],
        before=lambda p: before.append(check_for(cfg, p.model, p.train_loader, p.device)),
    )
    verdicts = before + [
        run_check(cfg.checks, "train.finite", lambda s: train_finite(res.nonfinite, res.state.step))
    ]
    last = res.history[-1] if res.history else {}
    verdicts.append(
        run_check(
            cfg.checks,
            "overfit.train_fit",
            lambda s: train_fit(
                last.get("train_loss"),
                last.get("train_acc"),
                float(s.train_loss_target),
                float(s.train_acc_target),
                res.state.epoch,
                cfg.trainer.epochs,
            ),
        )
    )
    summary = summary_of(cfg, ctx, res, verdicts)
    gap = gap_of(summary)
    summary.update(
        {
            "train_val_gap_acc": gap["gap_acc"],
            "train_val_gap_loss": gap["gap_loss"],
            "train_loss_target": float(fit.train_loss_target),
        }
    )
    gap_table = KeyValues(
        {
            "train accuracy": summary.get("train_acc"),
            "val accuracy": summary.get("val_acc"),
            "gap (train - val accuracy)": gap["gap_acc"],
            "train loss": summary.get("train_loss"),
            "val loss": summary.get("val_loss"),
            "gap (val - train loss)": gap["gap_loss"],
            "stopped because": res.stop_reason or "epoch budget used",
        }
    )
    why = Text(
        "A large gap is expected here: this stage only proves the model can fit; "
        "stage=regularize trades some training fit for validation accuracy."
    )
    return result_of(res, verdicts, summary, sections=[Section("Train/val gap", [gap_table, why])])


def until_train_loss(target: float):
    """The stage's callback: stop after the first epoch whose training loss is at or below
    `target` (0: never)."""

    def callback(rec):
        if target > 0 and math.isfinite(rec.train_loss) and rec.train_loss <= target:
            return (
                f"training loss {rec.train_loss:.4g} <= target {target:g} after epoch {rec.epoch}"
            )
        return None

    return callback
