"""stage=recipe: inspect -> baseline -> overfit -> regularize -> tune -> squeeze, in order.

Each stage is its own `python -m runner stage=<name>` (its own Hydra composition, run
directory `<k>-<name>/` and report) with this command's overrides. Each training stage
starts from the previous one's outcome (`from=<dir>`, runner/lineage.py: overfit from the
baseline run, regularize from overfit, tune from the kept ladder); squeeze gets the ladder
and the study as candidates. A non-zero exit (a failed check, a config error) is a failed
gate: the recipe stops there with the reason unless `stage.params.continue_on_fail=true`
(which only decides whether it goes on: recipe.gates fails, and the recipe exits 1, whenever a
stage failed). Before any stage runs, `check_plan` checks the stage list, `per_stage` and each
stage's composed config (one config error, exit 2, listing every problem).
Writes summary.json ({"stages": [...], "val_acc": <final>, "final": {...}, "not_run": [...]}),
recipe.csv and a report with a row per stage (what changed, val acc, delta, failed checks,
link; a stage a stopped recipe never ran: "not run").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from runner import jobs
from runner.checks.outcomes import recipe_gates, recipe_progress
from runner.config import override_key
from runner.errors import ConfigError, StageInterrupted
from runner.stages import train
from runner.stages.protocol import Context, Headline, StageResult, run_check

log = logging.getLogger("runner")

# the command's overrides go on to the stages; each takes the model./data. keys it reads
PASSES_OVERRIDES = True


@dataclass
class RecipeParams(train.Params):  # conf/stage/recipe.yaml builds on train
    """stage.params of stage=recipe. The recipe's own plan (which stages, each one's
    overrides) is a value, in conf/stage/recipe.yaml, where a user reads and copies it."""

    # the stages to run, in order (registered names: runner/stages/__init__.py)
    stages: List[str] = field(default_factory=list)
    # a stage that fails (exits non-zero) stops the recipe unless this is true
    continue_on_fail: bool = False
    # run each stage as its own `python -m runner` process instead of in this one (imports
    # paid once: ~4 s a stage less); each stage has its own run directory, log file, seed and
    # threads either way
    isolate: bool = False
    # overrides for one stage only, e.g.
    # 'stage.params.per_stage.overfit=["checks.overfit_train_fit.train_loss_target=0.05"]'
    per_stage: Dict[str, Any] = field(default_factory=dict)


Params = RecipeParams


# it reads from= itself: where its chain starts (see recipe_from)
OWN_FROM = True


def outcome(run_dir: Path):
    """from=<a recipe run>: its final model (the best passing stage's outcome), else the last
    training stage that finished."""
    from runner.lineage import outcome as outcome_of
    from runner.stages import stage_flag

    summary = jobs.summary(run_dir)
    final = summary.get("final") or {}
    if final.get("run") and Path(final["run"]).is_dir():
        o = outcome_of(Path(final["run"]))
        o.note = f"the recipe's final model: {final.get('what') or o.note}"
        w = Path(str(final.get("weights") or ""))
        if final.get("weights") and w.is_file() and w != o.weights:
            o.model = w  # an ensemble's file (runner/ensemble.py)
        return o
    for row in reversed(summary.get("stages") or []):
        d = Path(row.get("dir", ""))
        if not stage_flag(str(row.get("stage")), "TRAINS") or not d.is_dir():
            continue
        try:
            o = outcome_of(d)
        except ConfigError:
            continue
        o.note = f"the recipe's last training stage ({row['stage']}, {d.name})"
        return o
    raise ConfigError(
        f"from={run_dir}: this recipe run has no finished training stage to start from"
    )


def headline(run_dir: Path, own=()) -> Headline:
    """A recipe inside a recipe is refused; for a table of recipes: its final val accuracy."""
    s = jobs.summary(run_dir)
    final = s.get("final") or {}
    return Headline(
        s.get("val_acc"),
        f"{len(s.get('stages') or [])} stage(s); final from {final.get('stage', '?')}",
    )


def params(cfg) -> dict[str, Any]:
    """stage.params as a plain dict (typed by Params at compose time)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.stage.params, resolve=True)


def passthrough(overrides: list[str]) -> list[str]:
    """The command's overrides every stage gets (runner/jobs.py HANDED_ON): not the recipe's
    own stage/hydra ones, nor its `from=` (the recipe decides where each stage starts: see
    `recipe_from`)."""
    return jobs.select(overrides, jobs.HANDED_ON)


def recipe_from(overrides: list[str]) -> str | None:
    """`stage=recipe from=<dir>`: where the first training stage after baseline starts (and
    squeeze's candidates when no training stage ran before it)."""
    return next(
        (o.split("=", 1)[1] for o in overrides if "=" in o and override_key(o) == "from"), None
    )


def stage_overrides(per_stage: Any, name: str) -> list[str]:
    """`stage.params.per_stage.<name>`: a list of overrides (a single string: a list of one)."""
    v = (per_stage or {}).get(name) or []
    return [v] if isinstance(v, str) else [str(o) for o in v]


def _user_set(overrides: list[str], key: str) -> bool:
    """Whether the command set stage.params.per_stage.<key> (or the whole per_stage)."""
    return any(
        override_key(o) in ("stage.params.per_stage", f"stage.params.per_stage.{key}")
        or override_key(o).startswith(f"stage.params.per_stage.{key}.")
        for o in overrides
    )


def check_plan(cfg, p: dict[str, Any], overrides: list[str]) -> None:
    """Before any stage runs: the stage list, per_stage and every stage's composed config
    (stage=<name> + the command's overrides + its per_stage ones; from=/hydra.* left out).
    Every problem in one ConfigError (exit 2). No data, no model: composition only (and the
    stage's own stage.params checks where it has them)."""
    import importlib

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runner.config import _close, unread_keys
    from runner.stages import STAGES, get_stage

    me = str(cfg.stage.name)
    names = [k for k in STAGES if k != me]
    stages = [str(x) for x in p["stages"]]
    problems: list[str] = []
    if not stages:
        problems.append(
            f"stage.params.stages is empty: list the stages to run, in order "
            f"(from {', '.join(names)})"
        )
    for i, name in enumerate(stages):
        if name == me:
            problems.append(f"stage.params.stages[{i}]={me!r}: a recipe cannot run itself")
        elif name not in STAGES:
            problems.append(
                f"stage.params.stages[{i}]={name!r} is not a stage"
                + (_close(name, names) or f"; the stages: {', '.join(names)}")
            )
    per_stage = p["per_stage"] or {}
    if not isinstance(per_stage, dict):
        problems.append(f"stage.params.per_stage={per_stage!r} must map a stage to its overrides")
        per_stage = {}
    for key, v in per_stage.items():
        if key not in STAGES or key == me:
            problems.append(
                f"stage.params.per_stage.{key}: {key!r} is not a stage"
                + (_close(str(key), names) or f"; the stages: {', '.join(names)}")
            )
        elif key not in stages and _user_set(overrides, key):
            problems.append(
                f"stage.params.per_stage.{key}: {key} is not in stage.params.stages "
                f"[{', '.join(stages)}]"
            )
        if v is not None and not isinstance(v, (str, list, tuple)):
            problems.append(f"stage.params.per_stage.{key}={v!r} must be a list of overrides")
    common = passthrough(overrides)
    for i, name in enumerate(stages):  # a stage that cannot run where the recipe puts it
        hook = getattr(get_stage(name), "recipe_problem", None) if name in STAGES else None
        own = (
            stage_overrides(per_stage, name)
            if isinstance(per_stage.get(name), (str, list, tuple))
            else []
        )
        problem = hook(stages[:i], [*common, *own], recipe_from(overrides)) if hook else None
        if problem:
            problems.append(f"stage.params.stages[{i}]={name!r} {problem}")
    keys = jobs.flat_keys(cfg)
    parser = OverridesParser.create()

    def composable(o: str) -> bool:
        return jobs.classify(o) not in ("hydra", "location", "from")

    checked: set[str] = set()
    # the command's model./data. keys a stage's options do not read are left out for it
    # (model.name for the baseline's TinyCNN); a key no stage reads is a config error
    dropped: dict[str, list[str]] = {}
    for name in stages:
        if (
            name not in STAGES
            or name == me
            or name in checked
            or not isinstance(per_stage.get(name, []), (str, list, tuple))
        ):
            continue
        checked.add(name)
        where = f"stage.params.per_stage.{name}"
        own = [o for o in stage_overrides(per_stage, name) if composable(o)]
        base = [f"stage={name}", *[o for o in common if composable(o)]]
        # a sweep value (tune's per_stage: a range, a choice) is not composed: its key must exist
        plain, swept = [], []
        for o in own:
            try:
                (swept if parser.parse_override(o).is_sweep_override() else plain).append(o)
            except Exception:  # noqa: BLE001 -- not an override at all: compose says why
                plain.append(o)
        whole = f"stage={name} with {' '.join(base[1:] + plain) or 'no overrides'}"
        ccfg, bad = jobs.compose_each(base, plain, where, whole, keys, jobs.cli_problem)
        if bad:
            problems += bad
            continue
        unread = set(unread_keys(ccfg, [override_key(o) for o in common if composable(o)]))
        dropped[name] = [o for o in common if override_key(o) in unread]
        have = set(jobs.flat_keys(ccfg))
        for o in swept:
            k = override_key(o)
            if not o.startswith("+") and k not in have:
                problems.append(f"{where}: {o}: {k} is not in the config{_close(k, sorted(have))}")
        mod = importlib.import_module(STAGES[name])
        if hasattr(mod, "params"):  # the stage's own settings: unknown keys, types, ranges
            try:
                mod.params(ccfg)
            except ConfigError as e:
                problems += [f"{where}: {x}" for x in e.problems]
            except Exception as e:  # noqa: BLE001 -- the stage itself says so at its turn
                log.debug("recipe: stage %s's params not checked up front: %s", name, e)
    for o in common:
        if checked and all(o in dropped.get(n, []) for n in checked):
            hint = (
                "set model.pretrained=true, or keep regularize's pretrained rung in the plan"
                if override_key(o) == "model.pretrained_file"
                else "set the option that reads it too (e.g. model=timm for model.name)"
            )
            problems.append(
                f"{o}: no stage of this recipe reads {override_key(o)} with its "
                f"options ({', '.join(sorted(checked))}); {hint}"
            )
    if problems:
        raise ConfigError(problems)
    return dropped


def stage_headline(name: str, d: Path, own: list[str] | None = None) -> dict[str, Any]:
    """A stage's row head from its own module: its val accuracy and what it changed."""
    from runner.stages import get_stage

    h = get_stage(name).headline(d, own or [])
    return {"val_acc": h.val_acc, "change": h.change}


def final_model(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The model to adopt: the outcome of the passing stage with the best val accuracy (its
    own module says what that is: a run's best weights, a ladder's best rung, squeeze's
    adopted model); on a tie the later stage.

    A later stage can end below an earlier one (a short study whose trials all land under the
    kept ladder): the recipe then still ends on the better model, and `regressions` says so."""
    from runner.stages import get_stage

    def score(r):  # the stage's score on `metric` (jobs.RunRecord.score), else its accuracy
        return r.get("score") if isinstance(r.get("score"), (int, float)) else r["val_acc"]

    ranked = sorted(
        (r for r in rows if r["exit_code"] == 0 and isinstance(score(r), (int, float))),
        key=lambda r: (score(r), rows.index(r)),
        reverse=True,
    )
    for r in ranked:
        try:
            o = get_stage(r["stage"]).outcome(Path(r["dir"]))
        except Exception:  # noqa: BLE001 -- a stage without an outcome: the next best
            continue
        if o.weights is None:  # no model to adopt (e.g. only looked at the data)
            continue
        return {
            "stage": r["stage"],
            "run": str(o.run or r["dir"]),
            "config": str(o.config_file),
            # the final model itself: one model's weights, or squeeze's ensemble.pt
            "weights": str(o.model or o.weights),
            "what": o.note,
            "val_acc": r["val_acc"],
            **final_test(Path(r["dir"]), Path(o.run or r["dir"])),
        }
    return None


def final_test(stage_dir: Path, run_dir: Path) -> dict[str, Any]:
    """The final model's test figures, as its run scored them once after training (the
    stage's summary, else the outcome run's: a ladder's best rung, squeeze's adopted model);
    read after the final model was chosen, never by the choice."""
    for d in (stage_dir, run_dir):
        s = jobs.summary(d)
        if s.get("test"):
            return {
                "test_acc": s.get("test_acc"),
                "test_loss": s.get("test_loss"),
                "test": s["test"],
            }
    return {"test_acc": None, "test_loss": None, "test": None}


def candidates_compared(rows: list[dict[str, Any]]) -> int:
    """How many candidates validation chose among on the way to the final model: every
    training run the recipe made (a stage's own run, or its sub-runs: ladder rungs, study
    trials, squeeze's seed reruns and continuation), plus squeeze's ensemble when it was an
    option; the final choice among the stages compares these again and adds none."""
    n = 0
    for r in rows:
        s = jobs.summary(Path(r["dir"])) if r.get("dir") else {}
        if r.get("exit_code") is None or not (s or r.get("sub_runs")):
            continue
        if not isinstance(r.get("val_acc"), (int, float)) and not r.get("sub_runs"):
            continue  # looked at the data only (inspect), or never finished
        n += max(1, int(r.get("sub_runs") or 0))
        n += sum(1 for o in s.get("options") or [] if o.get("what") == "ensemble")
    return n


def regressions(
    rows: list[dict[str, Any]], n_val: int | None, min_delta: float = 0.005
) -> list[str]:
    """Passing stages with a val accuracy that ended below the best stage before them by
    more than noise (runner/checks/outcomes.py)."""
    from runner.checks.outcomes import regressions as below_best

    return below_best(rows, n_val, min_delta)


# recipe.csv's and summary stages' time columns (seconds): the stage's process wall time (what
# the user waits for), the wall_s its summary.json states (training and checks, without the
# process start), and its sub-runs' (ladder rungs, study trials, squeeze's reruns) count and
# summed summary wall_s
TIME_COLUMNS = ("wall_s", "stage_wall_s", "sub_runs", "sub_runs_wall_s", "n_val")


def sub_run_times(d: Path) -> list[dict[str, Any]]:
    """[{dir (relative to d), wall_s}] of the runs inside stage directory `d` (each directory
    below it with a summary.json, not nested in another): the breakdown of a ladder, a study
    or a squeeze. Cheap: summaries only."""
    found: list[Path] = []
    for f in sorted(d.rglob("summary.json")) if d.is_dir() else []:
        sub = f.parent
        if sub != d and not any(sub.is_relative_to(x) for x in found):
            found.append(sub)
    out = []
    for sub in found:
        w = jobs.summary(sub).get("wall_s")
        out.append(
            {
                "dir": str(sub.relative_to(d)),
                "wall_s": round(float(w), 2) if isinstance(w, (int, float)) else None,
            }
        )
    return out


def stage_times(d: Path | None, s: dict[str, Any], wall: float | None) -> dict[str, Any]:
    """A stage row's TIME_COLUMNS (None where it did not run) and its sub-runs' list."""
    subs = sub_run_times(d) if d is not None else []
    sub_wall = [x["wall_s"] for x in subs if x["wall_s"] is not None]
    own = s.get("wall_s")
    data = s.get("data") if isinstance(s.get("data"), dict) else {}
    return {
        "wall_s": round(wall, 2) if wall is not None else None,
        "stage_wall_s": round(float(own), 2) if isinstance(own, (int, float)) else None,
        "sub_runs": len(subs) if d is not None else None,
        "sub_runs_wall_s": round(sum(sub_wall), 2) if sub_wall else None,
        "n_val": int(data["num_val"]) if data.get("num_val") else None,
        "sub_runs_list": subs,
    }


def _stage_args(name, k, n, ctx, p, common, dropped, done, start) -> list[str]:
    """The command line of stage `name` (the k-th of n): the recipe's overrides it reads, its
    own, `from=` the last training stage that passed, its run (or sweep) directory, and the
    stage's recipe_args hook (squeeze: the earlier stages' runs as candidates)."""
    from runner.stages import get_stage, stage_flag

    d = ctx.run.path / f"{k}-{name}"
    own = stage_overrides(p["per_stage"], name)
    if dropped.get(name):
        log.info("recipe: %s does not read %s (left out for it)", name, " ".join(dropped[name]))
    args = [f"stage={name}", *[o for o in common if o not in dropped.get(name, [])], *own]
    prev = (
        next((dd for x, dd, c in reversed(done) if stage_flag(x, "TRAINS") and c == 0), start)
        if stage_flag(name, "FROM_PREVIOUS")
        else None
    )
    if prev is not None and not any(override_key(a) == "from" for a in args):
        args.append(f"from={prev}")
    if stage_flag(name, "SWEEP"):
        args = ["-m", *args, f"hydra.sweep.dir={d}"]
    else:
        args.append(f"hydra.run.dir={d}")
    mod = get_stage(name)
    if hasattr(mod, "recipe_args"):
        args += mod.recipe_args(args, [(x, dd) for x, dd, _ in done], start)
    log.info("recipe: %d/%d %s: python -m runner %s", k, n, name, " ".join(args))
    return args


def _stage_row(name, d, own, code, error, wall, prev_acc) -> dict[str, Any]:
    """recipe.csv's row of a stage that ran (or failed to): its headline, checks, times; the
    reason it failed from its run record (error.json), else what it logged."""
    rec = jobs.RunRecord.read(d)
    s, checks = rec.summary, rec.checks
    ran = any((d / f).exists() for f in ("summary.json", "study.json", "runs.csv"))
    head = (
        stage_headline(name, d, own)
        if ran or code == 0
        else {"val_acc": None, "change": "(did not finish)" if _started(d) else "(did not run)"}
    )
    acc = head["val_acc"]
    numbers = isinstance(acc, (int, float)) and isinstance(prev_acc, (int, float))
    metric = str(s.get("metric") or "accuracy")
    return {
        "stage": name,
        "exit_code": code,
        "change": head["change"],
        "val_acc": acc,
        # what the final model is chosen by (`metric`; accuracy: the headline val_acc)
        "score": acc if metric == "accuracy" else rec.score,
        "delta": acc - prev_acc if numbers else None,
        "checks_failed": [c["name"] for c in checks if c.get("status") == "fail"]
        or s.get("checks_failed")
        or [],
        "dir": str(d),
        "report": f"{d.name}/report.html" if (d / "report.html").exists() else "",
        "error": (rec.error or error)
        if code != 0 and not (checks and any(c.get("status") == "fail" for c in checks))
        else None,
        **stage_times(d, s, wall),
    }


def _started(d: Path) -> bool:
    """Whether a stage got as far as its run directory (more than the job layer's error.json)."""
    return d.is_dir() and any(p.name != "error.json" for p in d.iterdir())


def _not_run_row(path: Path) -> dict[str, Any]:
    return {
        "stage": path.name.split("-", 1)[1],
        "exit_code": None,
        "change": "not run",
        "val_acc": None,
        "delta": None,
        "checks_failed": [],
        "dir": str(path),
        "report": "",
        "error": None,
        **stage_times(None, {}, None),
    }


def _walk(cfg, ctx: Context, p) -> tuple[list, list, str | None, int | None]:
    """Run the stages in order: (rows, why each failed stage failed, why the recipe stopped,
    n_val)."""
    common = passthrough(list(ctx.overrides))
    rows: list[dict[str, Any]] = []
    done: list[tuple[str, Path, int]] = []
    failed: list[str] = []
    stopped, prev_acc, n_val = None, None, None
    how = "process" if p.get("isolate") else "in-process"
    # every stage's name and config, before any runs; which command keys each stage reads
    dropped = check_plan(cfg, p, list(ctx.overrides))
    start = recipe_from(list(ctx.overrides))
    for k, name in enumerate(p["stages"], start=1):
        d = ctx.run.path / f"{k}-{name}"
        args = _stage_args(name, k, len(p["stages"]), ctx, p, common, dropped, done, start)
        t_stage = time.perf_counter()  # what the user waits for: the whole process
        ran = jobs.run_argv(args, how=how, cwd=ctx.original_cwd)
        code = ran.code
        wall = time.perf_counter() - t_stage
        if code != 0:
            jobs.record_failure(d, code, ran.error)
        if code >= 128:  # stopped by a signal: its checkpoint is saved; so does the recipe
            raise StageInterrupted(code, name, d)
        done.append((name, d, code))
        row = _stage_row(
            name, d, stage_overrides(p["per_stage"], name), code, ran.error, wall, prev_acc
        )
        n_val = n_val or row["n_val"]  # the first stage that states its val set's size
        rows.append(row)
        if isinstance(row["val_acc"], (int, float)):
            prev_acc = row["val_acc"]
        if code != 0:
            reason = (
                f"stage {name} exited {code}"
                + (f" (failed: {', '.join(row['checks_failed'])})" if row["checks_failed"] else "")
                + (f": {row['error']}" if row["error"] else "")
            )
            log.warning("recipe: %s", reason)
            failed.append(reason)
            if not p["continue_on_fail"]:
                stopped = (
                    reason + "; the recipe stops here (stage.params.continue_on_fail=true goes on)"
                )
                break
    return rows, failed, stopped, n_val


def _report_body(cfg, ctx, rows, not_run_rows, n_val, failed, worse, v, v_reg, final_run):
    """The report's Stages section: the table, the walk figure, verdict lines, the final model."""
    from runner.plots import recipe_walk
    from runner.report import Figure, Table, Text

    table_rows = [
        {
            **r,
            "report": r["report"] if (Path(r["dir"]) / "report.html").exists() else None,
            "link": f"{r['stage']} report"
            if (Path(r["dir"]) / "report.html").exists()
            else "(no report)",
            "checks_failed": ", ".join(r["checks_failed"]),
            "error": r["error"] or "",
            "exit_code": "" if r["exit_code"] is None else r["exit_code"],
        }
        for r in rows + not_run_rows
    ]
    columns = ["stage", "change", "exit_code", "val_acc", "delta", "wall_s", "sub_runs"]
    body: list[Any] = [
        Table(table_rows, [*columns, "checks_failed", "error", "link"], links={"link": "report"})
    ]
    if rows:
        body.append(
            Figure(
                recipe_walk(
                    [f"{k}. {r['stage']}" for k, r in enumerate(rows, start=1)],
                    [r["val_acc"] for r in rows],
                    [r["n_val"] or n_val for r in rows],
                    [r["wall_s"] for r in rows],
                    [r["sub_runs_wall_s"] for r in rows],
                    title=f"recipe on {cfg.data.kind}: accuracy after each stage, and where the time "
                    "went",
                ),
                "recipe_stages",
            )
        )
        body.append(
            Text(
                "Left: validation accuracy after each stage; the band is one standard "
                "error of an accuracy measured on n_val images, sqrt(p(1-p)/n_val): "
                "steps inside it are noise. Right: each stage's process wall time; the "
                "darker part is its sub-runs' own training time (ladder rungs, study "
                "trials, squeeze's reruns).",
                note=True,
            )
        )
    if failed:
        body.insert(0, Text(v.message, strong=True))
    if worse:
        body.append(Text(f"{v_reg.message}.", strong=True))
    if final_run:
        body.append(
            Text(
                f"Final model (val acc {final_run['val_acc']:.4f}), from the "
                f"{final_run['stage']} stage: {final_run['what']}. Config "
                f"`{final_run['config']}`; weights `{final_run['weights']}`. Continue from it "
                f"with `python -m runner stage=train from={ctx.run.path}`."
            )
        )
        t = final_run.get("test")
        n = candidates_compared(rows)
        if t and t.get("acc") is not None:
            lo, hi = t.get("acc_ci95") or [None, None]
            body.append(
                Text(
                    f"Test accuracy {t['acc']:.4f} (95% interval {lo:.4f} - {hi:.4f}, "
                    f"{t['n']} images), scored once on the final model; val - test "
                    f"{t.get('val_test_gap') or 0:+.4f}. The val figure is the best of "
                    f"{n} candidate(s) validation chose among, so it is optimistic; the test "
                    "split was read by no choice."
                )
            )
        else:
            body.append(
                Text(
                    f"The final val figure is the best of {n} candidate(s) validation chose "
                    "among (optimistic); no test split to score it on (an image folder's "
                    "test/, or data.test_fraction).",
                    note=True,
                )
            )
    return body


def run(cfg, ctx: Context) -> StageResult:
    from runner.report import Section

    t_recipe = time.perf_counter()
    p = params(cfg)
    rows, failed, stopped, n_val = _walk(cfg, ctx, p)
    not_run = [f"{k}-{name}" for k, name in enumerate(p["stages"], start=1)][len(rows) :]
    not_run_rows = [_not_run_row(ctx.run.path / x) for x in not_run]

    # the final model is the best passing stage's (not merely the last one's), and its val
    # accuracy is the recipe's: a failed last stage does not stand for the recipe's result
    final_run = final_model(rows)
    final = final_run["val_acc"] if final_run else None
    recipe_csv = [
        {
            **{k: v for k, v in r.items() if k != "sub_runs_list"},
            "checks_failed": " ".join(r["checks_failed"]),
        }
        for r in rows + not_run_rows
    ]
    # a failed stage fails the recipe; continue_on_fail only decides whether it went on
    v = run_check(
        cfg.checks,
        "recipe.gates",
        lambda s: recipe_gates(
            len(p["stages"]), rows, failed, [x.split("-", 1)[1] for x in not_run], stopped
        ),
    )
    worse = regressions(rows, n_val)
    last_acc = next(
        (
            r["val_acc"]
            for r in reversed(rows)
            if r["exit_code"] == 0 and isinstance(r["val_acc"], (int, float))
        ),
        None,
    )
    v_reg = run_check(
        cfg.checks, "recipe.progress", lambda s: recipe_progress(worse, final_run, last_acc)
    )
    summary = {
        "stage": cfg.stage.name,
        "name": cfg.name,
        "val_acc": final,
        "val_loss": None,
        "stages": [
            {
                "stage": r["stage"],
                "val_acc": r["val_acc"],
                "checks_failed": r["checks_failed"],
                "dir": r["dir"],
                "exit_code": r["exit_code"],
                "error": r["error"],
                **{k: r[k] for k in TIME_COLUMNS},
                "sub_runs_list": r["sub_runs_list"],
            }
            for r in rows
        ],
        # the recipe's own wall time (its stages, plus the up-front plan check)
        "wall_s": round(time.perf_counter() - t_recipe, 2),
        "not_run": [x.split("-", 1)[1] for x in not_run],
        "final": final_run,
        # the final model's test split figures (scored once, after every choice)
        "test_acc": (final_run or {}).get("test_acc"),
        "test_loss": (final_run or {}).get("test_loss"),
        "test": (final_run or {}).get("test"),
        "metric": str(cfg.get("metric") or "accuracy"),
        # how many runs validation chose among: the final val_acc is the best of these
        "candidates": candidates_compared(rows),
        "regressions": worse,
        "stopped": stopped,
        "checks_failed": [x.name for x in (v, v_reg) if x.status == "fail"],
        "run_dir": str(ctx.run.path),
    }
    body = _report_body(cfg, ctx, rows, not_run_rows, n_val, failed, worse, v, v_reg, final_run)
    return StageResult(
        [v, v_reg],
        summary,
        [Section("Stages", body)],
        {"recipe.csv": recipe_csv},
        title=f"recipe on {cfg.data.kind}",
    )
