"""stage=squeeze (recipe stage 6): ensemble, seed reruns of the winner, and "leave it training".

Candidates come from `stage.params.from` (a regularize run's `rungs/`, a sweep's trial dirs,
or one run dir; `from=<dir>` on the command line means the same here: give one of them) and
`stage.params.runs` (a list of run dirs; one dir alone is a list of one), ranked by recorded
val accuracy (at the best val-loss epoch). Settings are checked before anything loads or
trains (one ConfigError, exit 2, naming each key): k an integer >= 1, seeds an integer >= 0,
continue_epochs null or an integer >= 0, each source an existing directory.

1. Ensemble: the best k are reloaded from `checkpoints/best.pt` (else `last.pt`) with the
   config saved in the checkpoint, evaluated on the full validation set, and their averaged
   logits scored (`squeeze.ensemble`; ensemble.csv). One member (one candidate, k=1) is no
   ensemble: the check skips and it is no option to adopt.
2. Seeds: before adopting the winner, it and the runner-up (the best candidate of another
   recipe, `runner_up`: one that trains the winner's config again is passed over) are
   rerun with `seeds - 1` more
   seeds each (same config and split, seed+1, seed+2, ...; `seeds/`), and compared as mean
   +/- std of `metric`'s selection value (what the candidates were ranked by: val accuracy
   by default; seeds.csv keeps each seed's val accuracy and adds the score). A lead that
   Welch's t-test over the seeds does not tell from noise (runner/checks/noise.py,
   p > 0.05) is not a win (`squeeze.seed_spread` warns; seeds.csv).
3. Leave it training: the winner continues from its `last.pt` (the resume machinery: model,
   optimiser, schedule and history) for `continue_epochs` more epochs without early stopping
   (`continued/`); the curve marks where it picked up, and the summary says whether val loss
   still improved.

What to adopt (`choose`): the best on val of the winner, its continuation and the ensemble;
the report's title names it, and `from=<squeeze dir>` starts from it (runner/lineage.py).
lineage.json records where everything came from: the sources, each candidate (recorded val
acc; ensemble member, skipped or unused), the winner and runner-up, the sub-runs and the
adopted option. Each sub-run (seeds/<label>-seed<N>/, continued/) has its own lineage.json
(the candidate it reruns or continues, and what changed) and says stage "squeeze" in its
summary, with its role and candidate; the config it trains is the candidate's own.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from omegaconf import OmegaConf

from runner import jobs
from runner.config import override_key
from runner.errors import ConfigError
from runner.output import ENSEMBLE_FILE
from runner.report import Images, Links, Section, Table, Text, verdict_counts
from runner.stages import regularize
from runner.stages.protocol import (
    Context,
    Headline,
    Outcome,
    StageResult,
    keyword_fields,
    run_check,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger("runner")


@dataclass
class SqueezeParams(regularize.Params):  # conf/stage/squeeze.yaml builds on regularize
    """stage.params of stage=squeeze (plus `from`, added below: a Python keyword)."""

    # or: run directories, e.g. '[outputs/a/b,outputs/c/d]' (used together with from); one
    # directory as a plain string is a list of one
    runs: Any = field(default_factory=list)
    # how many of the candidates (best val accuracy first) join the ensemble
    k: int = 3
    # runs per candidate for the winner and the runner-up (its own run + seeds - 1 reruns
    # with seed+1, seed+2, ...); below 2: no reruns
    seeds: int = 3
    # more epochs for the winner from its last checkpoint, no early stopping; null = as many
    # again as it ran; 0 = off
    continue_epochs: Optional[int] = None


# a regularize run dir (its rungs/), a tune/multirun sweep dir (its trials), or a run dir
Params = keyword_fields(SqueezeParams, "Params", **{"from": (Optional[str], None)})
# the settings squeeze reads (the rest of Params is what its YAML inherits from regularize)
OWN = ("from", "runs", "k", "seeds", "continue_epochs")
# it reads from= itself: the candidates' directories, not a config to start from
OWN_FROM = True


def outcome(run_dir: Path) -> Outcome:
    """from=<a squeeze run>: the run it adopted (the winner, its continuation, or for an
    ensemble, which is no single model, its first and best-ranked member)."""
    from runner.lineage import outcome as outcome_of
    from runner.lineage import run_outcome

    adopted = jobs.summary(run_dir).get("adopted")
    if not adopted:  # a sub-run (seed rerun, continuation) or an unfinished squeeze
        return run_outcome(run_dir)
    run = adopted.get("run")
    what = str(adopted.get("what") or "model")
    acc = adopted.get("val_acc")
    acc_s = f"val acc {acc:.4f}" if isinstance(acc, (int, float)) else "val acc ?"
    if isinstance(run, list):
        if not run:
            raise ConfigError(
                f"from={run_dir}: this squeeze run adopted an ensemble without members"
            )
        n = len(run)
        run = run[0]
        note = (
            f"squeeze adopted an ensemble of {n} ({acc_s}), one model file "
            f"({ENSEMBLE_FILE}); to train on from it: the config and weights of its first, "
            f"best-ranked member {Path(str(run)).name}"
        )
    else:
        note = f"squeeze adopted the {what} ({acc_s})"
    if not run:
        raise ConfigError(f"from={run_dir}: this squeeze run records no adopted run")
    d = Path(str(run))
    if not d.is_absolute():
        d = run_dir / d
    if not d.is_dir():
        raise ConfigError(
            f"from={run_dir}: the run squeeze adopted ({d}) is not a directory any more"
        )
    o = outcome_of(d)
    o.note = f"{note}: {o.note}"
    o.run = d
    if isinstance(adopted.get("run"), list) and (run_dir / ENSEMBLE_FILE).is_file():
        o.model = run_dir / ENSEMBLE_FILE  # the adopted model itself (predict, export)
    return o


def headline(run_dir: Path, own=()) -> Headline:
    """The adopted model's val accuracy; what was adopted, the ensemble, seeds, continuation."""
    s = jobs.summary(run_dir)
    parts = [f"ensemble of {len(s.get('members') or [])}"]
    if s.get("adopted"):
        parts.insert(0, f"adopted: {s['adopted']['what']}")
    seeds = (s.get("seeds") or {}).get("winner")
    if seeds:
        parts.append(
            f"winner over {len(seeds['seeds'])} seeds {seeds['mean']:.4f} +/- {seeds['std']:.4f}"
        )
    if s.get("continued"):
        parts.append(
            "left training: "
            + (
                "val loss still improving"
                if s["continued"]["val_loss_improved"]
                else "val loss no longer improving"
            )
        )
    return Headline(s.get("val_acc"), "; ".join(parts))


def gives_candidates(args: Sequence[str]) -> bool:
    """Whether squeeze's own args name its candidates."""
    return any(override_key(a) in ("from", "stage.params.from", "stage.params.runs") for a in args)


def _sources(done: Sequence[tuple[str, Path]]) -> list[Path]:
    """The runs of the recipe's training stages after the baseline, the latest first."""
    from runner.stages import stage_flag

    return [
        d
        for name, d in reversed(list(done))
        if stage_flag(name, "TRAINS") and stage_flag(name, "FROM_PREVIOUS") and d.is_dir()
    ]


def recipe_args(
    args: Sequence[str], done: Sequence[tuple[str, Path]], start: Optional[str]
) -> list[str]:
    """In a recipe: the runs of the training stages before it are its candidates (or the
    recipe's from= when none ran), unless its own args name them."""
    if gives_candidates(args):
        return []
    srcs = _sources(done) or ([Path(start)] if start else [])
    if not srcs:
        return []
    out = [f"stage.params.from={srcs[0]}"]
    if len(srcs) > 1:
        out.append("stage.params.runs=[" + ",".join(str(s) for s in srcs[1:]) + "]")
    return out


def recipe_problem(
    before: Sequence[str], args: Sequence[str], start: Optional[str]
) -> Optional[str]:
    """Why squeeze cannot run where the recipe puts it: nothing before it gives candidates."""
    from runner.stages import stage_flag

    if (
        gives_candidates(args)
        or start
        or any(stage_flag(n, "TRAINS") and stage_flag(n, "FROM_PREVIOUS") for n in before)
    ):
        return None
    return (
        "needs a training stage before it (its candidates), or "
        'stage.params.per_stage.squeeze=["stage.params.from=<dir>"] (or stage.params.runs)'
    )


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_params(p: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) for each squeeze setting out of its type or range."""
    out: list[tuple[str, str]] = []
    if not (_int(p["k"]) and p["k"] >= 1):
        out.append(
            ("k", f"stage.params.k={p['k']!r} must be an integer >= 1 (the ensemble's size)")
        )
    if not (_int(p["seeds"]) and p["seeds"] >= 0):
        out.append(
            (
                "seeds",
                f"stage.params.seeds={p['seeds']!r} must be an integer >= 0 (seeds per "
                "candidate for the winner and runner-up; 0 or 1: no reruns)",
            )
        )
    ce = p["continue_epochs"]
    if ce is not None and not (_int(ce) and ce >= 0):
        out.append(
            (
                "continue_epochs",
                f"stage.params.continue_epochs={ce!r} must be null (as many "
                "epochs again) or an integer >= 0 (0: don't continue)",
            )
        )
    if p["from"] is not None and not (isinstance(p["from"], str) and p["from"]):
        out.append(
            ("from", f"stage.params.from={p['from']!r} must be null or a directory (a string)")
        )
    runs = p["runs"]
    if runs is None:
        p["runs"] = []
    elif isinstance(runs, str):  # one run dir: a list of one, not its characters
        p["runs"] = [runs]
    elif not isinstance(runs, (list, tuple)):
        out.append(("runs", f"stage.params.runs={runs!r} must be a list of run directories"))
    else:
        bad = [f"runs[{i}]={r!r}" for i, r in enumerate(runs) if not (isinstance(r, str) and r)]
        if bad:
            out.append(
                (
                    "runs",
                    f"stage.params.{', '.join(bad)}: each run must be a directory (a string); "
                    "stage.params.runs is a list of run directories",
                )
            )
    return out


def params(cfg) -> dict[str, Any]:
    """squeeze's own stage.params, range-checked: every problem in one ConfigError (exit 2)."""
    p, problems = _params(cfg)
    if problems:
        raise ConfigError(problems)
    return p


def _params(cfg) -> tuple[dict[str, Any], list[str]]:
    """stage.params (typed by Params at compose time) and the range problems found in it."""
    p = OmegaConf.to_container(cfg.stage.params, resolve=True)
    p = {k: p.get(k) for k in OWN}
    return p, [msg for _, msg in check_params(p)]


def sources(cfg, cwd: Path) -> tuple[dict[str, Any], Optional[Path], list[Path]]:
    """The checked settings and the candidates' sources: stage.params.from (or `from=`) and
    stage.params.runs, each an existing directory; a `from=` that differs from
    stage.params.from is an error. Every problem (settings too) in one ConfigError."""
    p, problems = _params(cfg)
    if problems:  # check the directories that are well-formed, skip the rest
        if not isinstance(p["from"], str):
            p["from"] = None
        p["runs"] = (
            [r for r in p["runs"] if isinstance(r, str)]
            if isinstance(p["runs"], (list, tuple))
            else []
        )
    top = cfg.get("from")
    if (
        top is not None
        and p["from"] is not None
        and (cwd / str(top)).expanduser().resolve() != (cwd / str(p["from"])).expanduser().resolve()
    ):
        problems.append(
            f"stage=squeeze: from={top} and stage.params.from={p['from']} name different "
            "sources: give one of them (both mean the same here)"
        )
    src = p["from"] if p["from"] is not None else top
    key = "stage.params.from" if p["from"] is not None else "from"
    from_ = (cwd / str(src)).expanduser() if src is not None else None
    if from_ is not None and not from_.is_dir():
        problems.append(f"{key}={src} is not a directory")
    runs = [(cwd / str(r)).expanduser() for r in p["runs"]]
    problems += [
        f"stage.params.runs[{i}]={r} is not a directory"
        for i, (r, d) in enumerate(zip(p["runs"], runs))
        if not d.is_dir()
    ]
    if from_ is None and not runs and not problems:
        problems.append(
            "stage=squeeze needs stage.params.from=<regularize or sweep dir> "
            "or stage.params.runs=[<run dir>, ...]"
        )
    if problems:
        raise ConfigError(problems)
    return p, from_, runs


def ensemble_scores(member_logits: list[torch.Tensor], targets: torch.Tensor) -> dict[str, Any]:
    """Each member's accuracy and the averaged-logits ensemble's accuracy and loss."""
    import torch

    from runner.ensemble import mean_logits
    from runner.metrics import balanced_accuracy, confusion_counts, macro_f1

    targets = targets.long()
    accs = [float((lg.argmax(1) == targets).float().mean()) for lg in member_logits]
    mean = mean_logits(member_logits)

    def confusion(lg):
        return confusion_counts(targets, lg.argmax(1), lg.shape[1])

    cms = [confusion(lg) for lg in member_logits]
    return {
        # balanced accuracy and macro-F1 of each member and of the ensemble (metric=...)
        "member_balanced_acc": [balanced_accuracy(cm) for cm in cms],
        "member_macro_f1": [macro_f1(cm) for cm in cms],
        "ensemble_balanced_acc": balanced_accuracy(confusion(mean)),
        "ensemble_macro_f1": macro_f1(confusion(mean)),
        "member_acc": accs,
        "ensemble_acc": float((mean.argmax(1) == targets).float().mean()),
        "ensemble_loss": float(torch.nn.functional.cross_entropy(mean, targets)),
        "member_loss": [
            float(torch.nn.functional.cross_entropy(lg.float(), targets)) for lg in member_logits
        ],
    }


def _is_run(d: Path) -> bool:
    return (d / "summary.json").exists() and (d / "checkpoints").is_dir()


def candidates(sources: list[Path]) -> list[Path]:
    """Run dirs under each source: the source itself, its rungs/<k>-*/, or its sweep trials."""
    out: list[Path] = []
    for s in sources:
        if not s.is_dir():
            raise ConfigError(f"stage=squeeze: {s} is not a directory")
        found = (
            sorted(p for p in (s / "rungs").glob("*") if _is_run(p))
            if (s / "rungs").is_dir()
            else []
        )
        found = found or sorted(p for p in s.glob("*") if p.is_dir() and _is_run(p))
        if not found and _is_run(s):
            found = [s]
        if not found:
            raise ConfigError(f"stage=squeeze: no finished run with checkpoints in {s}")
        out += [p for p in found if p not in out]
    return out


def validated_elsewhere(dirs: list[Path], fingerprint: str) -> list[Path]:
    """The runs whose summary records another data fingerprint (input size, split, data)."""
    out = []
    for d in dirs:
        fp = (jobs.summary(d).get("data") or {}).get("fingerprint")
        if fp is not None and fp != fingerprint:
            out.append(d)
    return out


def _recorded_score(d: Path, metric: str) -> float:
    """A candidate's recorded figure of `metric` (runner/jobs.py selection_value, higher is
    better), -inf when it has none: what candidates are ranked by."""
    v = jobs.selection_value(jobs.summary(d), metric)
    return v if v is not None and math.isfinite(v) else -math.inf


def _option_score(sc: dict[str, Any], i: Optional[int], metric: str) -> Optional[float]:
    """The score on `metric` (higher is better) of member i, or of the ensemble (i None),
    from the logits squeeze scored on one validation set."""
    name = {"accuracy": "acc", "balanced_accuracy": "balanced_acc", "macro_f1": "macro_f1"}.get(
        metric, "loss"
    )
    v = sc[f"ensemble_{name}"] if i is None else sc[f"member_{name}"][i]
    return -v if name == "loss" else v


def _recorded_acc(d: Path) -> float:
    s = jobs.summary(d)
    acc = s.get("best_val_acc", s.get("val_acc"))
    return float(acc) if isinstance(acc, (int, float)) and math.isfinite(acc) else -1.0


def _acc_text(d: Path) -> str:
    a = _recorded_acc(d)
    return f"recorded val acc {a:.4f}" if a >= 0 else "no recorded val acc"


def sub_lineage(
    cand: Path,
    cand_cfg,
    role: str,
    label: str,
    ctx: Context,
    changed: dict[str, Any],
    note: str,
    weights: Optional[str] = None,
    config_file: Optional[Path] = None,
) -> dict[str, Any]:
    """lineage.json of a squeeze sub-run: the candidate it reruns or continues, what changed.

    The keys of runner/lineage.py's Lineage (so `lineage_html` and summary["from"] read it), with
    `changed` (key: value set on the candidate's config) and the squeeze run it belongs to.
    `source_stage` is the candidate's own stage (the run it reruns or continues was a
    regularize/train/... run); `note` says it is squeeze's candidate and what squeeze did."""
    from runner.checkpoint import best_checkpoint

    stage = str(cand_cfg.stage.name)
    return {
        "source": str(cand),
        "source_stage": stage,
        "config_file": str(config_file or best_checkpoint(cand)),
        "note": note,
        "common_stage": stage,
        "from_source": {},
        "from_stage": {},
        "from_command": {},
        "weights": weights,
        "changed": changed,
        "changed_by": f"squeeze ({role})",
        "stage": "squeeze",
        "role": role,
        "label": label,
        "candidate": str(cand),
        "candidate_recorded_val_acc": _recorded_acc(cand),
        "squeeze_run": str(ctx.run.path),
    }


def _sub_summary(cand: Path, cand_cfg, role: str, label: str, **more) -> dict[str, Any]:
    """Summary fields of a squeeze sub-run: it is squeeze's, training the candidate's config."""
    return {
        "stage": "squeeze",
        "role": role,
        "label": label,
        "candidate": str(cand),
        "candidate_stage": str(cand_cfg.stage.name),
        **more,
    }


def seed_reruns(
    cand: Path, label: str, n: int, ctx: Context, root: Path, metric: str = "accuracy"
) -> dict[str, Any]:
    """The candidate plus n - 1 reruns with the next seeds: val accuracies, and mean and std of
    what the seeds are compared on. That is `metric`'s selection value (runner/jobs.py
    selection_value, the figure squeeze ranked the candidates by): with metric=accuracy the val
    accuracies themselves; with another metric the group adds "metric" and "score" (one per
    seed, higher is better), and mean and std are the scores'."""
    from runner.checks.outcomes import mean_std, seed_values
    from runner.stages.common import sub_run

    base = jobs.trained_config(cand)
    saved_epochs = int(base.trainer.epochs)
    # as many epochs as the candidate ran: a stage's own stop (overfit's training-loss target)
    # is not in its config; early stopping is, and applies again
    ran = jobs.summary(cand).get("epochs")
    if isinstance(ran, int) and ran > 0:
        base.trainer.epochs = ran
    s0 = int(base.seed)
    seeds, accs, dirs = [s0], [_recorded_acc(cand)], [str(cand)]
    scores = [jobs.selection_value(jobs.summary(cand), metric)]
    for i in range(1, max(1, n)):
        c = base.copy()
        c.seed = s0 + i
        path = root / f"{label}-seed{s0 + i}"
        log.info("squeeze: %s (%s) again with seed %d", label, cand.name, s0 + i)
        changed = {"seed": s0 + i}
        if int(c.trainer.epochs) != saved_epochs:  # the candidate stopped before its budget
            changed["trainer.epochs"] = int(c.trainer.epochs)
        lin = sub_lineage(
            cand,
            base,
            "seed rerun",
            label,
            ctx,
            changed,
            f"squeeze's {label} candidate ({_acc_text(cand)}), "
            f"which this squeeze sub-run trains again from scratch with seed {s0 + i} "
            f"(its config and split otherwise, {int(c.trainer.epochs)} epochs as it ran)",
        )
        res, summ = sub_run(
            c,
            ctx,
            path,
            [f"seed={s0 + i}", f"trainer.epochs={c.trainer.epochs}"],
            f"squeeze: {label} seed {s0 + i}",
            lineage=lin,
            summary_extra=_sub_summary(cand, base, "seed rerun", label, seed=s0 + i),
        )
        seeds.append(s0 + i)
        accs.append(None if res.nonfinite else summ.get("best_val_acc"))
        scores.append(None if res.nonfinite else jobs.selection_value(summ, metric))
        dirs.append(str(path))
    group: dict[str, Any] = {"run": str(cand), "label": label, "seeds": seeds, "val_acc": accs}
    if metric != "accuracy":
        group.update(metric=metric, score=scores)
    mean, std = mean_std(seed_values(group))
    group.update(dirs=dirs, mean=mean, std=std)
    return group


def leave_training(cand: Path, extra: Optional[int], ctx: Context, path: Path) -> dict[str, Any]:
    """Continue a finished run from its last.pt for `extra` more epochs (None: as many again)."""
    from runner.checkpoint import load_checkpoint
    from runner.stages.common import sub_run

    last = cand / "checkpoints" / "last.pt"  # the resume machinery's checkpoint
    e0 = int(load_checkpoint(last)["loop"]["epoch"])
    extra = e0 if extra is None else int(extra)
    c = jobs.trained_config(cand)
    changed: dict[str, Any] = {"resume": str(last), "trainer.epochs": e0 + extra}
    if int(c.trainer.early_stopping_patience or 0) != 0:
        changed["trainer.early_stopping_patience"] = 0
    lin = sub_lineage(
        cand,
        c,
        "continued",
        "winner",
        ctx,
        changed,
        f"squeeze's winning candidate ({_acc_text(cand)}), "
        f"which this squeeze sub-run continues from its last.pt (epoch {e0}: model, "
        f"optimiser, schedule and history) for {extra} more epoch(s) without early "
        "stopping",
        weights=str(last),
        config_file=last,
    )
    extra_summary = _sub_summary(cand, c, "continued", "winner", from_epoch=e0)
    c.trainer.epochs = e0 + extra
    c.trainer.early_stopping_patience = 0
    c.resume = str(last)
    log.info("squeeze: leave it training: %s from epoch %d to %d", cand.name, e0, e0 + extra)
    res, summ = sub_run(
        c,
        ctx,
        path,
        [f"resume={last}", f"trainer.epochs={e0 + extra}", "trainer.early_stopping_patience=0"],
        f"squeeze: {cand.name} left training to epoch {e0 + extra}",
        mark_epoch=e0,
        lineage=lin,
        summary_extra=extra_summary,
    )
    hist = [
        r for r in res.history if r.get("val_loss") is not None and math.isfinite(r["val_loss"])
    ]
    before = [r for r in hist if r["epoch"] <= e0]
    after = [r for r in hist if r["epoch"] > e0]
    b = min(before, key=lambda r: r["val_loss"]) if before else None
    a = min(after, key=lambda r: r["val_loss"]) if after else None
    improved = bool(a and b and a["val_loss"] < b["val_loss"])
    msg = (
        "no epoch was added"
        if not after
        else f"val loss still improves: best {b['val_loss']:.4f} (epoch {b['epoch']}) -> "
        f"{a['val_loss']:.4f} (epoch {a['epoch']}, val acc {a['val_acc']:.4f}): a longer budget pays"
        if improved
        else f"val loss stopped improving: best {b['val_loss']:.4f} at epoch {b['epoch']}; the "
        f"{extra} more epochs reached {a['val_loss']:.4f} at best: the budget was long enough"
    )
    return {
        "run": str(cand),
        "dir": str(path),
        "from_epoch": e0,
        "to_epoch": res.state.epoch,
        "best_val_loss_before": b and b["val_loss"],
        "best_val_loss_after": a and a["val_loss"],
        "val_acc_before": b and b["val_acc"],
        "val_acc_after": a and a["val_acc"],
        "val_loss_improved": improved,
        "message": msg,
    }


CHOOSE_RULE = (
    "the highest val accuracy; on a tie, the lower val loss; on a tie of both, the "
    "simpler model (winner, then continued, then ensemble)"
)


def choose(options: list[dict[str, Any]]) -> dict[str, Any]:
    """The option to adopt: the highest score on `metric` (an option's "score"; without one,
    its val accuracy); on a tie, the lower val loss; on a tie of both, the earlier in
    `options` (listed simplest first: winner, continued, ensemble).

    A missing or non-finite val accuracy ranks last, a missing or non-finite val loss loses
    a tie."""

    def num(x: Any, bad: float) -> float:
        return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else bad

    if not options:
        raise ValueError("choose: no options")
    return min(
        enumerate(options),
        key=lambda io: (
            -num(io[1].get("score", io[1].get("val_acc")), -math.inf),
            num(io[1].get("val_loss"), math.inf),
            io[0],
        ),
    )[1]


def _refuse_stored_code(cands: list[Path], cfg) -> None:
    """A candidate's checkpoint config is data: a `_target_` only it names (not the packaged
    configs, not this run's own config) is refused unless trust_run_configs=true."""
    from runner.checkpoint import best_checkpoint, load_checkpoint
    from runner.lineage import flatten
    from runner.targets import refuse_untrusted, untrusted_code

    own = flatten(OmegaConf.to_container(cfg, resolve=False))
    for d in cands:
        ck = best_checkpoint(d)
        if ck is not None:
            stored = OmegaConf.to_container(OmegaConf.create(load_checkpoint(ck)["config"]))
            refuse_untrusted(
                untrusted_code(flatten(stored), own),
                f"stage=squeeze: {ck} (its stored config)",
                bool(cfg.get("trust_run_configs")),
            )


def member_logits(run_dir: Path, original_cwd: str, device: torch.device, split: str = "val"):
    """(logits, targets, config, data) of a run's best checkpoint on its full val set (or
    its test split: `split`="test", None when the data has none)."""
    from runner.checkpoint import best_checkpoint, load_checkpoint
    from runner.data import build_data
    from runner.loop import evaluate
    from runner.models import build_model

    ckpt = load_checkpoint(best_checkpoint(run_dir, required=True))
    mcfg = OmegaConf.create(ckpt["config"])
    data = build_data(mcfg.data, original_cwd, model=mcfg.model)  # the run's own mean/std
    model = build_model(mcfg.model, data.num_classes, data.in_chans, original_cwd)
    model.load_state_dict(ckpt["model"])
    model.to(device)
    which = data.test if split == "test" else data.val
    if which is None:
        return None, None, mcfg, data
    loader = which.loader(
        int(mcfg.trainer.batch_size) * 2, False, int(mcfg.seed), device, train=False, num_workers=0
    )
    ev = evaluate(model, loader, device, keep_logits=True)
    return ev.logits.cpu(), ev.targets.cpu(), mcfg, data


def adopted_evaluation(cfg, pool, adopted: dict[str, Any], ctx: Context) -> Optional[dict]:
    """The adopted model's final evaluation (runner/stages/common.py final_evaluation's
    shape): a single run's is its own summary's (the same best.pt); the ensemble's is scored
    here, once, on the members' averaged val logits and averaged test logits. Nothing
    selects on the test figures: adoption has already happened."""
    import torch

    from runner.ensemble import mean_logits
    from runner.metrics import confusion_counts, evaluation_block
    from runner.stages.common import resolve_device

    if adopted["what"] != "ensemble":
        return jobs.summary(Path(adopted["run"])).get("evaluation")
    device = resolve_device(cfg.trainer.device)
    names = pool.data.class_names

    def block(split):
        logits, targets = [], None
        for m in pool.members:
            lg, targets, _, _ = member_logits(Path(m), ctx.original_cwd, device, split)
            logits.append(lg)
        mean = mean_logits(logits)
        cm = confusion_counts(targets, mean.argmax(1), mean.shape[1])
        loss = float(torch.nn.functional.cross_entropy(mean, targets.long()))
        return evaluation_block(cm, loss, names)

    out = {"epoch": None, "val": block("val"), "test": None}
    if pool.data.test is not None and len(pool.data.test):
        log.info("squeeze: scoring the adopted ensemble once on the test split")
        out["test"] = block("test")
        if out["val"]["acc"] is not None and out["test"]["acc"] is not None:
            out["test"]["val_test_gap"] = out["val"]["acc"] - out["test"]["acc"]
    return out


def squeeze_lineage(
    ctx: Context,
    from_: list[Path],
    runs: list[Path],
    ranked: list[Path],
    members: list[Path],
    skipped: list[str],
    comparable: list[Path],
    k: int,
) -> dict[str, Any]:
    """lineage.json of a squeeze run: its sources, every candidate (recorded val acc, its
    stage, whether it was an ensemble member, skipped for another input size/split, or not
    used), the winner and runner-up. run() adds the sub-runs, the options and the adoption."""

    def stage_of(d: Path) -> Optional[str]:
        return jobs.summary(d).get("stage")

    def acc(d: Path) -> Optional[float]:
        a = _recorded_acc(d)
        return a if a >= 0 else None

    def used(d: Path) -> str:
        if d in members:
            return "ensemble member"
        if str(d) in skipped:
            return "skipped: validated on another data set/split/input size than the winner"
        return f"not used: beyond the best k={k}"

    cands = [
        {
            "rank": i + 1,
            "dir": str(d),
            "stage": stage_of(d),
            "recorded_val_acc": acc(d),
            "member": d in members,
            "skipped": str(d) in skipped,
            "used": used(d),
        }
        for i, d in enumerate(ranked)
    ]

    def pick(d: Optional[Path]) -> Optional[dict[str, Any]]:
        return {"dir": str(d), "recorded_val_acc": acc(d)} if d is not None else None

    second = runner_up(comparable)
    passed = comparable[1 : comparable.index(second) if second is not None else len(comparable)]

    return {
        "stage": "squeeze",
        "run_dir": str(ctx.run.path),
        "sources": {"from": str(from_[0]) if from_ else None, "runs": [str(r) for r in runs]},
        "k": k,
        "candidates": cands,
        "members": [str(m) for m in members],
        "skipped": list(skipped),
        "winner": pick(comparable[0] if comparable else None),
        "runner_up": pick(second),
        # candidates ranked between the two that train the winner's recipe again (runner_up)
        "same_recipe_as_winner": [str(d) for d in passed],
        "sub_runs": [],
        "rule": CHOOSE_RULE,
        "options": None,
        "adopted": None,
    }


def evaluate_members(cands: list[Path], k: int, ctx: Context, device):
    """The best k candidates reloaded and scored on one validation set: (members, their
    logits, ensemble.csv rows, targets, the data, candidates left out as validated on
    another set/split/input size)."""
    import torch

    logits, rows, targets, data, members, skipped = [], [], None, None, [], []
    for d in cands:
        if len(members) >= k:
            break
        lg, tg, mcfg, mdata = member_logits(d, ctx.original_cwd, device)
        if targets is None:
            targets, data = tg, mdata
        elif mdata.fingerprint != data.fingerprint or not torch.equal(tg, targets):
            # another input size or split (a ladder's smaller-input rung): not comparable
            log.warning(
                "squeeze: %s left out: validated on another data set/split/input size "
                "than %s; an ensemble needs one validation set",
                d,
                members[0],
            )
            skipped.append(str(d))
            continue
        members.append(d)
        logits.append(lg)
        rows.append(
            {
                "member": str(d),
                "model": mcfg.model.get("_target_") or mcfg.model.name,
                "recorded_val_acc": _recorded_acc(d),
            }
        )
    # candidates beyond the k evaluated (the runner-up when k=1): their recorded data
    # fingerprint (input size, split) says whether they validated on the same set
    for d in validated_elsewhere(
        [c for c in cands if c not in members and str(c) not in skipped], data.fingerprint
    ):
        log.warning(
            "squeeze: %s left out: its summary records another data set/split/input size than %s",
            d,
            members[0],
        )
        skipped.append(str(d))
    return members, logits, rows, targets, data, skipped


def seed_phase(cfg, cands: list[Path], n_seeds: int, ctx: Context, lineage: dict):
    """The winner and the runner-up rerun with n_seeds seeds each (sub-runs recorded in
    `lineage`); (the groups or None, the squeeze.seed_spread verdict, rows and stats)."""
    from runner.checks.outcomes import seed_spread

    if n_seeds < 2:
        v = run_check(cfg.checks, "squeeze.seed_spread", lambda s: seed_spread({}, None, n_seeds))
        return None, v, {}
    metric = str(cfg.get("metric") or "accuracy")
    win = seed_reruns(cands[0], "winner", n_seeds, ctx, ctx.run.path / "seeds", metric)
    if "runner_up" in lineage:  # squeeze_lineage chose it
        second = Path(lineage["runner_up"]["dir"]) if lineage["runner_up"] else None
    else:
        second = runner_up(cands)
    up = (
        seed_reruns(second, "runner-up", n_seeds, ctx, ctx.run.path / "seeds", metric)
        if second is not None
        else None
    )
    for g in (win, up):
        for sd, d in zip((g or {}).get("seeds", [])[1:], (g or {}).get("dirs", [])[1:]):
            lineage["sub_runs"].append(
                {
                    "dir": d,
                    "role": "seed rerun",
                    "label": g["label"],
                    "candidate": g["run"],
                    "seed": sd,
                }
            )
    rows = [row for g in (win, up) if g for row in _seed_rows(g)]
    v = run_check(
        cfg.checks,
        "squeeze.seed_spread",
        lambda s: seed_spread(win, up, n_seeds, alpha=float(s.alpha)),
    )
    stats = [
        {
            "candidate": f"{g['label']}: {g['run']}",
            "seeds": len(g["seeds"]),
            f"mean {_compared(g)}": g["mean"],
            "std": g["std"],
        }
        for g in (win, up)
        if g
    ]
    return {"winner": win, "runner_up": up}, v, {"rows": rows, "stats": stats}


def recipe_key(run_dir: Path) -> str:
    """What seed reruns of a run train (runner/jobs.py trained_config): its data, model,
    optimiser, schedule, augmentation and trainer settings, less the seed and what only
    changes speed or output. Two runs with one key are one recipe (a tune warm start that
    continued the ladder's kept rung from its weights trains, from scratch, the same one)."""
    c = jobs.trained_config(run_dir)
    ran = jobs.summary(run_dir).get("epochs")
    keep = {k: OmegaConf.to_container(c[k], resolve=True) for k in RECIPE_KEYS}
    for k in ("progress", "threads", "checkpoint_every"):
        keep["trainer"].pop(k, None)
    if isinstance(ran, int) and ran > 0:  # seed reruns train as many epochs as it ran
        keep["trainer"]["epochs"] = ran
    return json.dumps(keep, sort_keys=True, default=str)


# the config nodes that make a training recipe (recipe_key)
RECIPE_KEYS = ("data", "model", "optim", "sched", "aug", "trainer")


def runner_up(cands: list[Path]) -> Optional[Path]:
    """The best-ranked candidate after the winner that trains another recipe (recipe_key):
    one that trains the winner's again tells nothing about the winner's config; None when
    every candidate is the winner's recipe."""
    if len(cands) < 2:
        return None
    first = recipe_key(cands[0])
    for c in cands[1:]:
        if recipe_key(c) != first:
            return c
        log.info(
            "squeeze: %s trains the winner's recipe (%s) again: not a runner-up",
            c.name,
            cands[0].name,
        )
    return None


def _compared(group: dict[str, Any]) -> str:
    """What a seed group's mean and std are of: "val_acc", or "<metric> score"."""
    return f"{group['metric']} score" if "metric" in group else "val_acc"


def _seed_rows(group: dict[str, Any]) -> list[dict[str, Any]]:
    """seeds.csv's rows of one group: each seed's val accuracy and, when the seeds are compared
    on another metric, that metric's name and the seed's score on it (what the check compared)."""
    label = f"{group['label']} ({Path(group['run']).name})"
    rows = []
    for k, (sd, a, d) in enumerate(zip(group["seeds"], group["val_acc"], group["dirs"])):
        row: dict[str, Any] = {"candidate": label, "seed": sd, "val_acc": a}
        if "metric" in group:
            row.update(metric=group["metric"], score=group["score"][k])
        rows.append({**row, "dir": d})
    return rows


@dataclass
class Pool:
    """The candidates, the ensemble of the best k and their scores on one validation set."""

    ranked: list  # every candidate, best recorded val accuracy first
    cands: list  # those validated on the winner's data (seeds and continuation use these)
    members: list
    rows: list  # ensemble.csv
    scores: dict  # ensemble_scores
    data: Any
    k: int
    lineage: dict

    @property
    def best_member(self) -> float:
        return max(self.scores["member_acc"])


def ensemble_phase(cfg, ctx: Context, p: dict[str, Any], from_dir, run_dirs) -> Pool:
    """Rank the candidates, reload the best k on one validation set and score their ensemble."""
    from runner.stages.common import setup_runtime

    metric = str(cfg.get("metric") or "accuracy")
    cands = sorted(
        candidates(([from_dir] if from_dir else []) + run_dirs),
        key=lambda d: _recorded_score(d, metric),
        reverse=True,
    )
    _refuse_stored_code(cands, cfg)  # their checkpoints' configs build the members
    device = setup_runtime(cfg)
    k = int(p["k"])
    log.info(
        "squeeze: %d candidate run(s); %s",
        len(cands),
        f"ensemble of the best {min(k, len(cands))}"
        if min(k, len(cands)) > 1
        else "no ensemble (" + ("one candidate" if len(cands) == 1 else "stage.params.k=1") + ")",
    )
    members, logits, rows, targets, data, skipped = evaluate_members(cands, k, ctx, device)
    ranked = list(cands)
    # seeds and continuation compare candidates on the same validation set too
    cands = [c for c in cands if str(c) not in skipped]
    lineage = squeeze_lineage(
        ctx, [from_dir] if from_dir else [], run_dirs, ranked, members, skipped, cands, k
    )
    sc = ensemble_scores(logits, targets)
    for r, a, l_ in zip(rows, sc["member_acc"], sc["member_loss"]):
        r.update({"val_acc": a, "val_loss": l_})
    if len(members) > 1:
        rows.append(
            {
                "member": "ensemble (mean logits)",
                "model": f"{len(members)} models",
                "recorded_val_acc": None,
                "val_acc": sc["ensemble_acc"],
                "val_loss": sc["ensemble_loss"],
            }
        )
    return Pool(ranked, cands, members, rows, sc, data, k, lineage)


def ensemble_section(cfg, pool: Pool):
    """The squeeze.ensemble verdict and the report's Ensemble section."""
    from runner.checks.outcomes import ensemble

    sc, members = pool.scores, pool.members
    why_single = (
        "one candidate"
        if len(pool.ranked) == 1
        else "stage.params.k=1"
        if pool.k == 1
        else "one candidate validated on the winner's data"
    )
    v = run_check(
        cfg.checks,
        "squeeze.ensemble",
        lambda s: ensemble(sc["member_acc"], sc["ensemble_acc"], members, why_single=why_single),
    )
    blocks: list[Any] = [
        Text(
            f"{len(members)} of {len(pool.cands)} candidate(s), ranked by recorded val accuracy; "
            "each reloaded from its best checkpoint and evaluated on the full val set "
            f"({len(pool.data.val)} images)"
            + ("; the ensemble averages their logits." if len(members) > 1 else f": {v.message}.")
        ),
        Table(pool.rows, ["member", "model", "recorded_val_acc", "val_acc", "val_loss"]),
    ]
    if len(members) > 1:
        gain = sc["ensemble_acc"] - pool.best_member
        blocks.append(
            Text(
                f"Ensemble {sc['ensemble_acc']:.4f} vs best member {pool.best_member:.4f} "
                f"({gain:+.4f})."
            )
        )
    return v, Section("Ensemble", blocks)


def continue_phase(p: dict[str, Any], ctx: Context, pool: Pool):
    """Leave the winner training (stage.params.continue_epochs); (its outcome, its report
    section), or (None, None) when continue_epochs=0."""
    if not (p["continue_epochs"] is None or int(p["continue_epochs"]) > 0):
        return None, None
    longer = leave_training(pool.cands[0], p["continue_epochs"], ctx, ctx.run.path / "continued")
    pool.lineage["sub_runs"].append(
        {
            "dir": longer["dir"],
            "role": "continued",
            "label": "winner",
            "candidate": longer["run"],
            "from_epoch": longer["from_epoch"],
            "to_epoch": longer["to_epoch"],
        }
    )
    section = Section(
        "Leave it training",
        [
            Text(
                f"{Path(longer['run']).name} continued from epoch {longer['from_epoch']} to "
                f"{longer['to_epoch']} without early stopping: {longer['message']}."
            ),
            Images(["continued/plots/curves.png"]),
            Links([("continued run report", "continued/report.html")]),
        ],
    )
    return longer, section


def adoption(pool: Pool, longer: Optional[dict[str, Any]], metric: str = "accuracy"):
    """What to adopt: the best on val (`metric`) of the single winner, its continuation and the
    ensemble (on a tie the simpler, cheaper model first); (options, adopted, its sections)."""
    from runner.checkpoint import best_checkpoint

    sc, members = pool.scores, pool.members
    options = [
        {
            "what": "winner",
            "val_acc": sc["member_acc"][0],
            "val_loss": sc["member_loss"][0],
            "run": str(members[0]),
            "score": _option_score(sc, 0, metric),
            "weights": str(best_checkpoint(Path(members[0]), required=True)),
        }
    ]
    if longer and longer["val_loss_improved"]:
        options.append(
            {
                "what": "continued",
                "val_acc": longer["val_acc_after"],
                "val_loss": longer["best_val_loss_after"],
                "run": longer["dir"],
                "score": longer["val_acc_after"]
                if metric == "accuracy"
                else jobs.selection_value(jobs.summary(Path(longer["dir"])), metric),
                "weights": str(best_checkpoint(Path(longer["dir"]), required=True)),
            }
        )
    if len(members) > 1:
        options.append(
            {
                "what": "ensemble",
                "val_acc": sc["ensemble_acc"],
                "val_loss": sc["ensemble_loss"],
                "run": [str(m) for m in members],
                "score": _option_score(sc, None, metric),
                # the ensemble as one model file (runner/ensemble.py), written by run()
                "weights": str(Path(pool.lineage["run_dir"]) / ENSEMBLE_FILE),
            }
        )
    adopted = choose(options)
    pool.lineage.update({"options": options, "adopted": adopted})
    told = ", ".join(f"{o['what']} {o['val_acc']:.4f} (loss {o['val_loss']:.4f})" for o in options)
    given = [x for x in [pool.lineage["sources"]["from"], *pool.lineage["sources"]["runs"]] if x]
    sections = [
        Section(
            "Adopted",
            [
                Text(
                    f"Adopted: {adopted['what']} (val acc {adopted['val_acc']:.4f}, val loss "
                    f"{adopted['val_loss']:.4f}), the best on val of: {told}. A tie on val "
                    "accuracy goes to the lower val loss; a tie of both to the simpler model "
                    "(winner, continued, ensemble in that order)."
                )
            ],
        ),
        Section(
            "Started from",
            [
                Text(
                    "Candidates from "
                    + ", ".join(f"`{x}`" for x in given)
                    + ", ranked by recorded val accuracy (lineage.json):"
                ),
                Table(
                    pool.lineage["candidates"], ["rank", "dir", "stage", "recorded_val_acc", "used"]
                ),
            ],
        ),
    ]
    return options, adopted, sections


def run(cfg, ctx: Context) -> StageResult:
    # `from=<dir>` on the command line means stage.params.from: the candidates
    p, from_dir, run_dirs = sources(cfg, Path(ctx.original_cwd))
    pool = ensemble_phase(cfg, ctx, p, from_dir, run_dirs)
    v, section = ensemble_section(cfg, pool)
    verdicts, sections = [v], [section]
    files: dict[str, Any] = {"ensemble.csv": pool.rows, "lineage.json": pool.lineage}
    # seeds: the winner and the runner-up again with more seeds, before adopting the winner
    n_seeds = int(p["seeds"] or 0)
    seeds, sv, more = seed_phase(cfg, pool.cands, n_seeds, ctx, pool.lineage)
    verdicts.append(sv)
    if seeds is not None:
        files["seeds.csv"] = more["rows"]
        sections.append(
            Section("Seeds", [Text(sv.message), Table(more["stats"]), Table(more["rows"])])
        )
    # leave it training: the winner continues from its last checkpoint
    longer, section = continue_phase(p, ctx, pool)
    sections += [section] if section else []
    options, adopted, adopted_sections = adoption(
        pool, longer, str(cfg.get("metric") or "accuracy")
    )
    sections += adopted_sections
    from runner.stages.common import evaluation_sections, final_summary, per_class_rows

    final = adopted_evaluation(cfg, pool, adopted, ctx)
    sections += evaluation_sections(final)
    if per_class_rows(final):
        files["per_class.csv"] = per_class_rows(final)
    if len(pool.members) > 1:  # the scored ensemble as one loadable model (adopted or not)
        files[ENSEMBLE_FILE] = ensemble_file(pool, ctx)
    sc, data = pool.scores, pool.data
    summary = {
        "stage": cfg.stage.name,
        "name": cfg.name,
        "val_acc": adopted["val_acc"],
        "val_loss": adopted["val_loss"],
        "adopted": adopted,
        "options": options,
        "ensemble_acc": sc["ensemble_acc"],
        "ensemble_loss": sc["ensemble_loss"],
        "best_member_val_acc": pool.best_member,
        "ensemble_gain": sc["ensemble_acc"] - pool.best_member,
        "members": [str(m) for m in pool.members],
        "member_val_acc": sc["member_acc"],
        "candidates": len(pool.cands),
        "metric": str(cfg.get("metric") or "accuracy"),
        "seeds": seeds,
        "continued": longer,
        **final_summary(final),
        "checks": verdict_counts(verdicts),
        "checks_failed": [x.name for x in verdicts if x.status == "fail"],
        "run_dir": str(ctx.run.path),
        "data": {
            "kind": data.kind,
            "num_train": len(data.train),
            "num_val": len(data.val),
            "num_classes": data.num_classes,
            "fingerprint": data.fingerprint,
        },
    }
    return StageResult(
        verdicts,
        summary,
        sections,
        files,
        metrics=[],
        title=f"squeeze: adopted {_adopted_name(adopted)} on {data.kind}",
    )


def ensemble_file(pool: Pool, ctx: Context) -> dict[str, Any]:
    """ensemble.pt: the members' weights and configs, and how they average (mean logits)."""
    from runner.checkpoint import usage_meta
    from runner.ensemble import ensemble_payload

    sc = pool.scores
    return ensemble_payload(
        pool.members,
        lambda cfg: usage_meta(cfg, pool.data, ctx.original_cwd),
        sc["ensemble_acc"],
        sc["ensemble_loss"],
    )


def _adopted_name(adopted: dict[str, Any]) -> str:
    """'the winner (val acc 0.9123)', 'the continued run (...)', 'an ensemble of 3 (...)'."""
    what = {
        "winner": "the winner",
        "continued": "the continued winner",
        "ensemble": f"an ensemble of {len(adopted.get('run') or [])}",
    }.get(adopted["what"], f"the {adopted['what']}")
    acc = adopted.get("val_acc")
    return what + (f" (val acc {acc:.4f})" if isinstance(acc, (int, float)) else "")
