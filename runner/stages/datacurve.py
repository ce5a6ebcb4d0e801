"""stage=datacurve: would more data help? (recipe stage 4: "get more data: by far the best way
to regularise"; issue 27). A learning curve with a fit and a prediction.

The same model and budget are trained on nested, stratified subsets of the training split
(`stage.params.fractions` of it, `data.train_fraction`: a smaller subset's images are in a
larger one's) with `stage.params.seeds` seeds each, each point a sub-run in
`points/<fraction>-seed<seed>/`, all validated on the full, unchanged val split. Their
validation error (1 - the selection accuracy: the best val-loss epoch's, as every stage
ranks runs) is fitted with a saturating power law

    error(n) = a * n^(-b) + c        (a > 0, b > 0, 0 <= c <= min error)

by least squares (scipy's curve_fit, in log n), and the fit is bootstrapped over its
residuals (`stage.params.bootstrap` refits) for an interval. The verdict (check
`datacurve.more_data`) predicts the accuracy at twice the training data: "more data would
help: about +X points at 2x the data (interval)" when the interval's lower end gains more
than `checks.datacurve_more_data.min_gain` points (pass), else "the curve is flat: look at the
model or the labels" (warn). Too few distinct sizes to fit: skip.

Budget (`stage.params.budget`): `epochs` (default) trains every point for trainer.epochs (20
in conf/stage/datacurve.yaml) with early stopping on val loss (patience 3), each to its own
convergence; cost sum(fractions) x seeds full-data trainings (the defaults: 3.7). `steps`
gives every point the full run's optimiser steps (trainer.epochs / fraction epochs); cost
len(fractions) x seeds (8), and a small share is then evaluated many times. Written: datacurve.csv (one row per point), the plot (points, the fit, its
band, the prediction), summary.json `datacurve`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from runner import jobs
from runner.errors import ConfigError
from runner.stages.protocol import Context, Headline, NoParams, Rows, StageResult, run_check

log = logging.getLogger("runner")

# in a recipe: the points start from the previous training stage's config (from scratch)
FROM_PREVIOUS = True

COLUMNS = ["fraction", "n_train", "seed", "val_acc", "val_error", "val_loss", "epochs", "dir"]


@dataclass
class DatacurveParams(NoParams):
    """stage.params of stage=datacurve."""

    # shares of the training split, each a nested stratified subset (1.0: all of it)
    fractions: List[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    # runs per fraction, seeds seed, seed+1, ...
    seeds: int = 2
    # refits of the bootstrap that gives the prediction's interval
    bootstrap: int = 300
    # what every point gets the same of: epochs (trainer.epochs each, with early stopping
    # on val loss: each point trains to its own convergence, as a learning curve wants; cost
    # sum(fractions) x seeds full-data runs) or steps (trainer.epochs / fraction epochs: the
    # full run's optimiser steps for every share; cost len(fractions) x seeds)
    budget: str = "epochs"


Params = DatacurveParams


def outcome(run_dir: Path):
    """from=<a learning curve>: the full-data point's run (its config and weights)."""
    from runner.lineage import run_outcome

    s = jobs.summary(run_dir)
    full = (s.get("datacurve") or {}).get("full_run")
    return run_outcome(Path(full) if full else run_dir)


def headline(run_dir: Path, own=()) -> Headline:
    s = jobs.summary(run_dir)
    d = s.get("datacurve") or {}
    return Headline(s.get("best_val_acc", s.get("val_acc")), str(d.get("verdict") or ""))


def check_params(p: Dict[str, Any]) -> List[str]:
    fr = [float(f) for f in p["fractions"]]
    problems = []
    if len(set(fr)) < 2:
        problems.append(
            f"stage.params.fractions={fr}: a curve needs at least 2 different fractions "
            "(e.g. [0.1,0.25,0.5,1.0])"
        )
    bad = [f for f in fr if not 0 < f <= 1]
    if bad:
        problems.append(f"stage.params.fractions={fr}: each must be > 0 and <= 1, not {bad}")
    if int(p["seeds"]) < 1:
        problems.append(f"stage.params.seeds={p['seeds']} must be >= 1")
    if p["budget"] not in ("steps", "epochs"):
        problems.append(f"stage.params.budget={p['budget']!r} must be steps or epochs")
    if int(p["bootstrap"]) < 0:
        problems.append(f"stage.params.bootstrap={p['bootstrap']} must be >= 0")
    return problems


# ----------------------------------------------------------------------------- the stage
def run(cfg, ctx: Context) -> StageResult:
    from runner.checks.datacurve import NAME, figure, more_data_verdict, predict
    from runner.report import Section, Table, Text
    from runner.stages.common import finite_verdict, result_of, sub_run, summary_of

    p = {k: cfg.stage.params[k] for k in ("fractions", "seeds", "bootstrap", "budget")}
    problems = check_params(p)
    if problems:
        raise ConfigError(problems)
    fractions = sorted({float(f) for f in p["fractions"]})
    seeds = [int(cfg.seed) + i for i in range(int(p["seeds"]))]
    epochs = int(cfg.trainer.epochs)
    steps = p["budget"] == "steps"

    def epochs_of(f: float) -> int:
        return max(1, math.ceil(epochs / f)) if steps else epochs

    cost = sum(f * epochs_of(f) / epochs for f in fractions) * len(seeds)
    log.info(
        "datacurve: %d fraction(s) x %d seed(s) = %d runs, the same %s each (cost: %.2f "
        "full-data trainings of %d epochs)",
        len(fractions),
        len(seeds),
        len(fractions) * len(seeds),
        "optimiser steps" if steps else "epochs",
        cost,
        epochs,
    )
    rows: List[Dict[str, Any]] = []
    full = None
    for f in fractions:
        for s in seeds:
            c = cfg.copy()
            c.data.train_fraction = f
            c.seed = s
            c.trainer.epochs = epochs_of(f)
            path = ctx.run.path / "points" / f"{f:g}-seed{s}"
            res, summ = sub_run(
                c,
                ctx,
                path,
                [
                    *ctx.overrides,
                    f"data.train_fraction={f:g}",
                    f"seed={s}",
                    f"trainer.epochs={epochs_of(f)}",
                ],
                f"datacurve: {f:g} of the training data, seed {s}",
                summary_extra={"stage": "datacurve", "role": "point", "fraction": f},
            )
            acc = None if res.nonfinite else jobs.selection_value(summ, "accuracy")
            rows.append(
                {
                    "fraction": f,
                    "n_train": len(res.data.train),
                    "seed": s,
                    "val_acc": acc,
                    "val_error": None if acc is None else 1 - acc,
                    "val_loss": summ.get("best_val_loss"),
                    "epochs": summ.get("epochs"),
                    "dir": str(path),
                }
            )
            log.info(
                "datacurve: %g (%d images) seed %d: val_acc %s",
                f,
                len(res.data.train),
                s,
                "n/a" if acc is None else f"{acc:.4f}",
            )
            if f == fractions[-1] and full is None:
                full = (res, summ, path)
    ok = [r for r in rows if r["val_error"] is not None]
    n = np.array([r["n_train"] for r in ok], float)
    err = np.array([r["val_error"] for r in ok], float)
    pred = (
        predict(n, err, float(n.max()), int(p["bootstrap"]), int(cfg.seed))
        if len(set(n.tolist())) >= 3
        else {}
    )
    v = run_check(cfg.checks, NAME, lambda st: more_data_verdict(rows, pred, float(st.min_gain)))
    v.figures["datacurve"] = figure(rows, pred)
    res, summ, path = full
    verdicts = [finite_verdict(cfg, res), v]
    extra = {
        "datacurve": {
            "fractions": fractions,
            "seeds": seeds,
            "budget": p["budget"],
            "cost_full_runs": round(cost, 3),
            "points": rows,
            "fit": {k: pred.get(k) for k in ("a", "b", "c")} if pred else None,
            "gain_2x": pred.get("gain_2x"),
            "gain_2x_interval": pred.get("gain_2x_interval"),
            "acc_2x": pred.get("acc_2x"),
            "verdict": v.message,
            "full_run": str(path),
        },
        "candidates": len(rows),
    }
    summary = summary_of(cfg, ctx, res, verdicts, extra)
    shown = [{**r, "dir": str(Path(r["dir"]).relative_to(ctx.run.path))} for r in rows]
    return result_of(
        res,
        verdicts,
        summary,
        sections=[
            Section(
                "Learning curve",
                [
                    Text(
                        v.message
                        + " (the plot: plots/datacurve_more_data_datacurve.png, under the checks)"
                    ),
                    Table(shown, COLUMNS, links={"dir": "report"}),
                    Text(
                        "Each point trains the same model and budget on a nested, stratified "
                        "share of the training split (data.train_fraction) and is validated "
                        "on the full val split. Fit: error = a n^-b + c, least squares; the "
                        "band and interval: a residual bootstrap of the fit."
                    ),
                ],
            )
        ],
        files={"datacurve.csv": Rows(rows, COLUMNS)},
        metrics=res.history,
        title=f"datacurve: {summary.get('model', '')} on {cfg.data.kind}",
    )
