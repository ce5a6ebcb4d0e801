"""stage=regularize (recipe stage 4): a ladder of single changes, each kept only when it helps.

Rung 0 is the stage config as composed; every rung k composes the same command plus the
overrides kept so far plus its own, trains in `rungs/<k>-<name>/` (its own run directory,
report and checkpoints) and is compared with the current best on val accuracy at the best
val-loss epoch. Decision rule (`decide`): keep when the gain exceeds
max(min_delta, sqrt(2 p (1 - p) / n_val)), p the current best accuracy: one standard error of
the difference of two accuracies on n_val examples. Outputs: ladder.csv, regularized.yaml (the
kept overrides as an experiment file), regularized_config.yaml (the final composed config),
and `regularize.first_layer` (the best model's first-layer filters).

Before rung 0 trains, every rung is checked (`check_rungs`): composed on its own against the
command (the kept overrides are unknown yet) and validated like a run, so a typo or a bad value
in any rung is one config error (exit 2) naming the rung, not a rung reverted at the end of the
ladder. A rung with `when: <key>` is composed too (an unknown key is an error whatever the
condition) and its `when` key must exist, but it is validated only when the key is set in the
command's config: a rung that will be skipped may need that key to validate (pretrained weights
need a file). A rung that still fails at its turn (at run time, or a `when:` rung enabled by a
kept rung) is recorded with its error and reverted; the ladder goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, OmegaConf

from runner import jobs
from runner.config import override_key, overrides_yaml
from runner.errors import ConfigError
from runner.stages import overfit
from runner.stages.protocol import Context, Headline, Outcome, StageResult, run_check

log = logging.getLogger("runner")


@dataclass
class Rung:
    """One step of the ladder: a name and the overrides it adds to the kept ones."""

    name: str = MISSING
    # any Hydra overrides, e.g. [aug=light] or [optim.name=adamw, optim.weight_decay=0.05]
    overrides: List[str] = field(default_factory=list)
    # run the rung only when this key of the config is set (else it is listed as skipped)
    when: Optional[str] = None


@dataclass
class RegularizeParams(overfit.Params):  # conf/stage/regularize.yaml builds on overfit
    """stage.params of stage=regularize."""

    # the smallest val-accuracy gain that counts, whatever the noise estimate says
    min_delta: float = 0.005
    # the ladder, tried in order; conf/stage/regularize.yaml lists the recipe's default one
    rungs: List[Rung] = field(default_factory=list)


Params = RegularizeParams
TRAINS = True
FROM_PREVIOUS = True


def outcome(run_dir: Path) -> Outcome:
    """from=<a ladder>: the config with the kept changes (regularized_config.yaml) and the
    weights of the best rung; a ladder that never finished is a plain run's outcome."""
    from runner.checkpoint import best_checkpoint
    from runner.lineage import load_yaml, run_outcome

    kept = run_dir / "regularized_config.yaml"
    if not kept.is_file():
        return run_outcome(run_dir)
    s = jobs.summary(run_dir)
    best_dir = s.get("best_rung_dir")
    return Outcome(
        run_dir,
        load_yaml(kept),
        kept,
        "regularize",
        best_checkpoint(run_dir / best_dir) if best_dir else None,
        f"the ladder's kept changes ({' '.join(s.get('kept_overrides') or []) or 'none'})",
        run=run_dir / best_dir if best_dir else run_dir,
    )


def headline(run_dir: Path, own=()) -> Headline:
    """The ladder's val accuracy; the stage's changes and the rungs it kept."""
    from runner.stages.train import changed

    s = jobs.summary(run_dir)
    kept = "kept: " + (" ".join(s.get("kept_overrides") or []) or "nothing")
    return Headline(
        s.get("ladder_val_acc", s.get("best_val_acc", s.get("val_acc"))),
        f"{changed(run_dir, s, own)} {kept}",
    )


def params(cfg) -> dict[str, Any]:
    """stage.params as a plain dict (typed by Params at compose time)."""
    return OmegaConf.to_container(cfg.stage.params, resolve=True)


# ----------------------------------------------------------------------------- decision rule
def decide(
    best_acc: float, cand_acc: float | None, n_val: int, min_delta: float, proportion: bool = True
) -> dict[str, Any]:
    """Keep the candidate when it beats the current best on the same val set by more than
    noise (runner/checks/noise.py same_val_set: more than max(min_delta, one standard error)).

    `proportion` false (metric=val_loss: the scores are negated losses, not proportions, and
    have no binomial standard error): keep when the gain is more than min_delta."""
    from runner.checks.noise import same_val_set

    if not proportion:
        delta = None if cand_acc is None else cand_acc - best_acc
        return {
            "keep": delta is not None and delta > min_delta,
            "delta": delta,
            "threshold": min_delta,
            "p_value": None,
            "test": "gain in val loss > min_delta",
        }
    d = same_val_set(best_acc, cand_acc, n_val, min_delta)
    return {
        "keep": d.significant,
        "delta": d.delta,
        "threshold": d.threshold,
        "p_value": d.p_value,
        "test": d.test,
    }


# ----------------------------------------------------------------------------- experiment YAML
def experiment_overrides(overrides: Sequence[str]) -> list[str]:
    """The command's overrides an experiment file should carry (runner/jobs.py
    EXPERIMENT_FILE): what the run is, not its stage, start, resume or Hydra settings."""
    from runner import jobs

    return jobs.select(overrides, jobs.EXPERIMENT_FILE)


def _same_input_size(base_cfg, named: Sequence[str]) -> list[str]:
    """A rung is one change: it trains at the base's image size unless it (or a kept rung)
    names data.image_size. Without this, `model.pretrained=true` would also switch to the
    weights' own input size (data.image_size defaults to it): a second change, and on small
    images a far costlier run (digits at 16 px -> resnet10t's 176 px is ~120x the pixels).
    The user's command line is part of the base and is not repeated."""
    if any(override_key(o) == "data.image_size" for o in named):
        return []
    return [f"data.image_size={int(base_cfg.data.image_size)}"]


# `when: imbalanced`: a rung for imbalanced classes only (the base rung's training split)
IMBALANCED = "imbalanced"


def check_rungs(cfg, rungs: Sequence[dict], ctx: Context) -> None:
    """Compose and validate every rung on its own against the command before anything trains;
    one ConfigError lists every bad rung as `stage.params.rungs[<i>] (<name>): <override>: why`."""
    from runner.config import _close

    keys = jobs.flat_keys(cfg)
    base = list(ctx.overrides)
    problems: list[str] = []
    missing = object()
    for i, rung in enumerate(rungs):
        name = str(rung.get("name") or f"rung{i + 1}")
        where = f"stage.params.rungs[{i}] ({name})"
        change = [str(o) for o in (rung.get("overrides") or [])]
        when = rung.get("when")
        if when == IMBALANCED:  # a fact of the data, known once the base rung has trained
            when = None
        if when and OmegaConf.select(cfg, str(when), default=missing) is missing:
            problems.append(f"{where}: when: {when} is not in the config{_close(str(when), keys)}")
            continue
        _, bad = jobs.compose_each(base, change, where, f"{where}: {' '.join(change)}", keys)
        if bad:
            problems += bad
            continue
        if when and not OmegaConf.select(cfg, str(when), default=None):
            continue  # skipped at its turn unless a kept rung sets the key (then checked there)
        try:
            jobs.plan_in_task(base + change, ctx.original_cwd, f"{where}: {' '.join(change)}")
        except ConfigError as e:
            problems += e.problems
        except Exception as e:  # noqa: BLE001
            problems.append(
                f"{where}: {' '.join(change)}: {type(e).__name__}: {jobs.first_line(e)}"
            )
    if problems:
        raise ConfigError(problems)


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(s))[:40] or "rung"


LADDER_COLUMNS = [
    "rung",
    "name",
    "change",
    "val_acc",
    "val_loss",
    "score",
    "delta",
    "threshold",
    "p_value",
    "kept",
    "best_epoch",
    "epochs",
    "error",
    "dir",
]


def _row(k: int, name: str, change: str, best_before, path: Optional[str]) -> dict[str, Any]:
    """A ladder.csv row before its rung ran."""
    return {
        "rung": k,
        "name": name,
        "change": change,
        "val_acc": None,
        "val_loss": None,
        "score": None,
        "best_epoch": None,
        "epochs": None,
        "delta": None,
        "threshold": None,
        "best_before": best_before,
        "kept": False,
        "dir": path,
        "error": None,
    }


@dataclass
class Ladder:
    """The ladder as it climbs: the rows so far, the kept overrides, the best rung."""

    cfg: Any
    ctx: Context
    min_delta: float
    rows: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    best: Any = None  # the best rung's TrainResult
    best_summary: dict = field(default_factory=dict)
    best_cfg: Any = None
    best_dir: str = "rungs/0-base"
    best_acc: float = 0.0  # the best rung's score (jobs.selection_value, on `metric`)
    base_acc: float = 0.0
    n_val: int = 0
    metric: str = "accuracy"

    def score(self, summ: dict) -> Optional[float]:
        return jobs.selection_value(summ, self.metric)

    @property
    def root(self) -> Path:
        return self.ctx.run.path / "rungs"

    def base(self) -> bool:
        """Rung 0, the stage config as composed; False when it gave nothing to compare with."""
        from runner.stages.common import sub_run

        self.best, self.best_summary = sub_run(
            self.cfg,
            self.ctx,
            self.root / "0-base",
            list(self.ctx.overrides),
            "regularize rung: 0-base",
        )
        self.best_cfg = self.cfg
        if self.best.nonfinite or self.score(self.best_summary) is None:
            return False
        self.best_acc = self.base_acc = float(self.score(self.best_summary))
        self.n_val = len(self.best.data.val)
        row = _row(0, "base", "(stage config)", None, "rungs/0-base")
        row.update(self._figures(self.best_summary, self.best_acc), kept=True)
        self.rows.append(row)
        return True

    def imbalanced(self) -> bool:
        """`when: imbalanced`: the base rung's training classes, largest / smallest count, at
        least trainer.imbalance_ratio (runner/imbalance.py)."""
        ratio = (self.best_summary.get("imbalance") or {}).get("ratio", 1.0)
        return ratio is None or ratio >= float(self.cfg.trainer.imbalance_ratio)

    def imbalance_text(self) -> str:
        ratio = (self.best_summary.get("imbalance") or {}).get("ratio", 1.0)
        return (
            f"the training classes are balanced (largest / smallest {ratio:.1f} < "
            f"trainer.imbalance_ratio={float(self.cfg.trainer.imbalance_ratio):g})"
        )

    @staticmethod
    def _figures(summ: dict, acc) -> dict[str, Any]:
        return {
            "val_acc": summ.get("best_val_acc") if acc is not None else None,
            "val_loss": summ.get("best_val_loss"),
            "score": acc,
            "best_epoch": summ.get("best_epoch"),
            "epochs": summ.get("epochs"),
        }

    def climb(self, k: int, rung: dict, n: int) -> None:
        """Rung k: train the kept overrides plus its own; keep it when it beats the best by
        more than noise; a rung that fails at its turn is recorded and reverted."""
        from runner.stages.common import sub_run

        name = str(rung.get("name") or f"rung{k}")
        change = [str(o) for o in (rung.get("overrides") or [])]
        path = self.root / f"{k}-{_slug(name)}"
        row = _row(k, name, " ".join(change), self.best_acc, f"rungs/{path.name}")
        when = rung.get("when")
        if when == IMBALANCED and not self.imbalanced():
            log.info("regularize: rung %d/%d %s skipped: the classes are balanced", k, n, name)
            self.rows.append({**row, "dir": None, "error": f"skipped: {self.imbalance_text()}"})
            return
        if (
            when
            and when != IMBALANCED
            and not OmegaConf.select(self.best_cfg, str(when), default=None)
        ):
            log.info("regularize: rung %d/%d %s skipped: %s is not set", k, n, name, when)
            self.rows.append({**row, "dir": None, "error": f"skipped: {when} is not set"})
            return
        log.info("regularize: rung %d/%d %s: %s", k, n, name, " ".join(change))
        overrides = [
            *self.ctx.overrides,
            *self.kept,
            *change,
            *_same_input_size(self.best_cfg, self.kept + change),
        ]
        try:
            rcfg, _ = jobs.plan_in_task(overrides, self.ctx.original_cwd)
            res, summ = sub_run(rcfg, self.ctx, path, overrides, f"regularize rung: {path.name}")
        except Exception as e:  # noqa: BLE001 -- checked up front (check_rungs); a run-time failure is reverted
            log.error("regularize: rung %s failed: %s: %s (reverted)", name, type(e).__name__, e)
            row["error"] = f"{type(e).__name__}: {jobs.first_line(e)}"
            self.rows.append({**row, "dir": row["dir"] if path.is_dir() else None})
            return
        acc = None if res.nonfinite else self.score(summ)
        if res.nonfinite:  # diverged: reverted like a rung that hurt, and the ladder says why
            row["error"] = f"diverged: {res.nonfinite}"
            log.warning("regularize: rung %s diverged: %s", name, res.nonfinite)
        d = decide(
            self.best_acc, acc, self.n_val, self.min_delta, proportion=self.metric != "val_loss"
        )
        row.update(self._figures(summ, acc))
        row.update(delta=d["delta"], threshold=d["threshold"], p_value=d["p_value"], kept=d["keep"])
        log.info(
            "regularize: %s %s %s vs best %.4f (delta %s, threshold %.4f) -> %s",
            name,
            "val_acc" if self.metric == "accuracy" else self.metric,
            "none (diverged)" if acc is None else f"{acc:.4f}",
            self.best_acc,
            "none" if d["delta"] is None else f"{d['delta']:+.4f}",
            d["threshold"],
            "KEPT" if d["keep"] else "reverted",
        )
        self.rows.append(row)
        if d["keep"]:
            self.kept += change
            self.best_acc, self.best, self.best_summary, self.best_cfg = float(acc), res, summ, rcfg
            self.best_dir = f"rungs/{path.name}"

    def decision_rule(self) -> str:
        return (
            f"keep when gain > max({self.min_delta:g}, one standard error sqrt(2p(1-p)/n_val)): "
            f"a one-sided z-test at p < 0.16 on the same n_val={self.n_val} images "
            "(runner/checks/noise.py)"
        )


def run(cfg, ctx: Context) -> StageResult:
    from runner.stages.common import finite_verdict, result_of, summary_of

    p = params(cfg)
    rungs = list(p["rungs"] or [])  # typed by Rung at compose time
    check_rungs(cfg, rungs, ctx)  # every rung composes and validates, before rung 0 trains
    ladder = Ladder(cfg, ctx, float(p["min_delta"]), metric=str(cfg.metric))
    log.info("regularize: rung 0 (base), then %d rung(s)", len(rungs))
    if not ladder.base():
        verdicts = [finite_verdict(cfg, ladder.best)]
        out = result_of(ladder.best, verdicts, summary_of(cfg, ctx, ladder.best, verdicts))
        out.exit_code = 1  # no ladder without a base to compare with
        return out
    for k, rung in enumerate(rungs, start=1):
        ladder.climb(k, rung, len(rungs))
    return _result(cfg, ctx, p, ladder)


def _result(cfg, ctx: Context, p: dict[str, Any], ladder: Ladder) -> StageResult:
    """The ladder's outputs (ladder.csv, regularized.yaml, regularized_config.yaml), its
    verdicts on the best rung, its summary and report."""
    from runner.checks.weights import first_layer_verdict
    from runner.report import Code, Section, Table, Text
    from runner.stages.common import finite_verdict, result_of, summary_of

    header = (
        "Written by stage=regularize: the command's own overrides plus the kept ladder changes.\n"
        "Copy into conf/experiment/; the best rung again (no ladder):\n"
        "  python -m runner stage=regularize 'stage.params.rungs=[]' experiment=regularized\n"
        "The full composed config: regularized_config.yaml beside this file."
    )
    inherited = (ctx.lineage or {}).get("from_source") or {}
    kept, best, best_cfg = ladder.kept, ladder.best, ladder.best_cfg
    regularized = overrides_yaml(
        experiment_overrides(ctx.overrides) + kept,
        jobs.task_groups(),
        header.splitlines(),
        inherited,
    )
    final_yaml = OmegaConf.to_yaml(best_cfg)
    verdicts = [
        finite_verdict(cfg, best),
        run_check(
            cfg.checks,
            "regularize.first_layer",
            lambda s: first_layer_verdict(best.model, float(s.min_corr), int(s.min_kernel)),
        ),
    ]
    rule = ladder.decision_rule()
    extra = {
        "ladder": ladder.rows,
        "kept_overrides": kept,
        "base_val_acc": ladder.base_acc,
        "best_rung_dir": ladder.best_dir,
        "ladder_val_acc": ladder.best_acc,
        "ladder_gain": ladder.best_acc - ladder.base_acc,
        "decision_rule": rule,
        # the runs validation compared (the rungs trained); the recipe adds them up
        "candidates": sum(1 for r in ladder.rows if r.get("dir")),
    }
    summary = summary_of(best_cfg, ctx, best, verdicts, extra)
    summary["stage"] = cfg.stage.name
    table = [
        Text(
            f"Rule: {rule}, p = current best val accuracy (at the best "
            "val-loss epoch; early stopping on val loss). Rung reports: the dir column."
        ),
        Table(_table_rows(ladder.rows, ctx.run.path), LADDER_COLUMNS, links={"dir": "report"}),
        Text(
            f"Kept: `{' '.join(kept) or '(nothing)'}`; base {ladder.base_acc:.4f} -> "
            f"{ladder.best_acc:.4f}. Files: ladder.csv, regularized.yaml, regularized_config.yaml."
        ),
    ]
    return result_of(
        best,
        verdicts,
        summary,
        sections=[
            Section("Ladder", table),
            Section("regularized.yaml", [Code(regularized)]),
            Section("Final config", [Code(final_yaml)]),
        ],
        files={
            "ladder.csv": ladder.rows,
            "regularized.yaml": regularized,
            "regularized_config.yaml": final_yaml,
        },
        metrics=best.history,
        config=best_cfg,
        title=f"regularize: {summary.get('model', '')} on {cfg.data.kind}",
    )


def _table_rows(rows: Sequence[dict], root) -> list[dict]:
    """Ladder rows for the report: `report` the rung's report.html where it exists (the dir
    column links there), `dir` blank when the rung has no directory (skipped, or failed
    before it trained)."""
    out = []
    for r in rows:
        d = r.get("dir")
        report = f"{d}/report.html" if d and (root / d / "report.html").is_file() else None
        out.append(
            {
                **r,
                "error": r.get("error") or "",
                "report": report,
                "dir": d if d and (root / d).is_dir() else "",
            }
        )
    return out
