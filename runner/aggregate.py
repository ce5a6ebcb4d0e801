"""One table per sweep: collect job directories, group seeds, rank, and write the summary.

After `python -m runner -m model=a,b seed=1,2,3` there are six run directories and no
answer; this module gives the answer (tuning playbook: "untracked experiments might as
well not exist"). It reads only files the run-directory contract promises (`.hydra/`,
`summary.json`, `checks.json`) plus `error.json`, which a sweep job writes when it fails,
so it works on any old sweep, on several sweeps together, on resumed jobs, and on jobs
that ran in other processes (joblib) or other machines.

Writes into the summary directory (through RunDir, the one output module):
- `runs.csv`   one row per job: its overrides as columns, status, error line, figures,
               check counts, wall time;
- `groups.csv` jobs that differ only in `seed`, with mean / std / count per figure,
               ranked by the main metric, each compared with the best group (Welch's
               t-test over seeds, runner/checks/noise.py: `vs_best`, `p_value`, `test`);
- `report.html` the same as a page with sortable tables and `plots/<metric>_by_key.png`.

Used by `SweepSummary` (a Hydra callback registered in conf/config.yaml: every `-m` sweep
ends with it) and by `python -m runner aggregate DIR...`. No torch here: it must stay
cheap to import, Hydra loads the callback on every start.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from runner.config import override_key
from runner.errors import ConfigError
from runner.jobs import SWEEP_IDENTITY, key_class

log = logging.getLogger("runner")

# summary.json figures copied into runs.csv, in this order (other numeric ones follow)
FIGURES = (
    "val_acc",
    "val_loss",
    "train_loss",
    "train_acc",
    "best_val_acc",
    "best_val_loss",
    "epochs",
    "params",
    "images_per_s",
    "wall_s",
)
# figures that get mean/std per seed group (the main metric is always added)
GROUP_FIGURES = ("val_acc", "val_loss", "train_loss", "best_val_acc", "epochs", "wall_s")
CHECK_STATUSES = ("pass", "warn", "fail", "skip")
# jobs without results: error.json is newer than any summary.json, or neither exists;
# every other status comes from summary.json (finished, stopped_early, nonfinite, pruned...)
NO_RESULT = ("failed", "incomplete")
ERROR_FILE = "error.json"
# a sweep's outcome (its exit code, the jobs by status): what `python -m runner -m` returns
SWEEP_FILE = "sweep.json"


# ----------------------------------------------------------------------------- job errors
def one_line(text: str, limit: int = 400) -> str:
    """An error message as one table cell: lines joined, bullets dropped, length capped."""
    parts = [p.strip().lstrip("-").strip() for p in str(text).splitlines()]
    line = "; ".join(p for p in parts if p).replace(":;", ":")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def write_job_error(run_dir: Path, exc: BaseException, exit_code: int, prefix: str = "") -> Path:
    """Record why a sweep job failed (`error.json`), so the sweep table can list it.

    Called by the Hydra task (runner/app.py) in multirun mode; the job then returns its
    exit code instead of raising, and the other jobs' results are kept.
    """
    from runner.output import RunDir

    message = f"{prefix}{exc}" if prefix else f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return RunDir(run_dir).write_json(
        ERROR_FILE,
        {
            "status": "failed",
            "error": one_line(message),
            "message": message,
            "type": type(exc).__name__,
            "exit_code": exit_code,
            "traceback": tb,
            "time": datetime.now().isoformat(timespec="seconds"),
        },
    )


# ----------------------------------------------------------------------------- reading jobs
def _read_yaml(p: Path) -> Any | None:
    import yaml

    try:
        return yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _load_config(p: Path):
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(p)
    except Exception:  # noqa: BLE001 -- a half-written or hand-edited file: fall back to override strings
        return None


def _select(cfg, key: str) -> Any:
    from omegaconf import OmegaConf

    if cfg is None:
        return None
    try:
        v = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001 -- a key that does not resolve reads as absent
        return None
    if OmegaConf.is_config(v):
        return json.dumps(OmegaConf.to_container(v, resolve=False), sort_keys=True)
    return v


def _parse_scalar(s: str) -> Any:
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None}.get(s.lower(), s)


def _override_pairs(lines: Sequence[str]) -> list[tuple[str, str]]:
    """`key=value` overrides -> (key, value); `+`/`++` dropped, deletions and hydra.* skipped."""
    out = []
    for line in lines or []:
        line = str(line)
        if line.startswith("~") or "=" not in line:
            continue
        key, value = override_key(line), line.split("=", 1)[1]
        if key_class(key) not in SWEEP_IDENTITY:
            continue
        out.append((key, value))
    return out


def is_job_dir(p: Path) -> bool:
    return (p / ".hydra").is_dir()


def find_job_dirs(paths: Sequence[Path]) -> list[Path]:
    """Job directories in or under `paths` (a sweep, several sweeps, runs, or a mix)."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise ConfigError(
                f"aggregate: {p} is not a directory; expected a sweep directory "
                "(multirun/<date>/<time>) or a run directory (with .hydra/)"
            )
        if is_job_dir(p):
            found.append(p)
            continue
        found += [h.parent for h in p.rglob(".hydra") if h.is_dir()]
    unique = sorted({d.resolve() for d in found}, key=_job_sort_key)
    if not unique:
        raise ConfigError(
            f"aggregate: no run directories (with .hydra/) under "
            f"{', '.join(str(p) for p in paths)}; expected multirun/<date>/<time> "
            "sweep folders or outputs/<date>/<time> run folders"
        )
    return unique


def _job_sort_key(p: Path):
    return (
        str(p.parent),
        0 if p.name.isdigit() else 1,
        int(p.name) if p.name.isdigit() else 0,
        p.name,
    )


@dataclass
class Job:
    """What one job directory says about itself."""

    path: Path
    overrides: dict[str, Any]  # identity keys -> effective value (from the composed config)
    stage: str | None
    seed: Any
    status: str
    error: str | None
    exit_code: int | None
    figures: dict[str, Any]
    checks: dict[str, int]
    checks_failed: list[str]
    resumed: bool
    config: Any = None  # the composed config (.hydra/config.yaml), for keys other jobs varied
    choices: dict[str, Any] = field(default_factory=dict)  # config group -> option

    def value(self, key: str) -> Any:
        """This job's value of `key`, also when another sweep varied it and this one did not."""
        if key in self.overrides:
            return self.overrides[key]
        return self.choices[key] if key in self.choices else _select(self.config, key)


def load_job(path: Path) -> Job:
    path = Path(path)
    hydra_dir = path / ".hydra"
    earlier = sorted(path.glob(".hydra.before-resume-*"))
    # keys: every override the job was ever started with (a resumed job may repeat fewer);
    # values: the current composed config, i.e. what produced the current results
    pairs: dict[str, str] = {}
    for rec in earlier + [hydra_dir]:
        pairs.update(_override_pairs(_read_yaml(rec / "overrides.yaml") or []))
    cfg = _load_config(hydra_dir / "config.yaml")
    hydra_yaml = _read_yaml(hydra_dir / "hydra.yaml") or {}
    choices = ((hydra_yaml.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    overrides: dict[str, Any] = {}
    for key, raw in pairs.items():
        if key in choices:  # a config group (model=resnet18): the option's name
            overrides[key] = choices[key]
            continue
        v = _select(cfg, key)
        overrides[key] = v if v is not None or cfg is not None else _parse_scalar(raw)
    seed = overrides.pop("seed", None)
    if seed is None:
        seed = _select(cfg, "seed")
    overrides.pop("stage", None)

    from runner import jobs

    rec = jobs.RunRecord.read(path)  # status, error and exit code: the one reading of a run
    summary = rec.summary or None
    figures: dict[str, Any] = {}
    checks = {s: 0 for s in CHECK_STATUSES}
    checks_failed: list[str] = []
    status, err, code = rec.status, rec.error, rec.exit_code
    if status != "failed" and summary is not None:
        for k in FIGURES:
            figures[k] = summary.get(k)
        for k, v in summary.items():  # stage-specific figures (e.g. tune's objective)
            if (
                k not in figures
                and k != "exit_code"  # the job's own column (below)
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            ):
                figures[k] = v
        got = summary.get("checks") if isinstance(summary.get("checks"), dict) else {}
        checks = {s: int(got.get(s) or 0) for s in CHECK_STATUSES}
        checks_failed = list(summary.get("checks_failed") or [])
    elif status != "failed":
        status, code = "incomplete", None
        err = err or "no summary.json: still running, killed, or stopped before writing results"
    stage = (summary or {}).get("stage") or _select(cfg, "stage.name") or choices.get("stage")
    resumed = bool((summary or {}).get("resumed_from")) or bool(earlier)
    return Job(
        path=path,
        overrides=overrides,
        stage=stage,
        seed=seed,
        status=status,
        error=err,
        exit_code=code,
        figures=figures,
        checks=checks,
        checks_failed=checks_failed,
        resumed=resumed,
        config=cfg,
        choices=choices,
    )


# ----------------------------------------------------------------------------- the table
@dataclass
class SweepTable:
    """Rows (one per job) and seed groups, ranked by `metric`."""

    rows: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    keys: list[str]  # identity keys (overrides other than seed), in first-seen order
    varied: list[str]  # keys with more than one value among the rows
    fixed: dict[str, Any]
    metric: str
    mode: str
    exit_code: int
    failed: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None  # report.html, or runs.html beside another tool's report.html

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def build_table(
    jobs: Sequence[Job],
    out_dir: Path,
    metric: str = "val_acc",
    mode: str = "max",
    require_metric: bool = True,
) -> SweepTable:
    if mode not in ("max", "min"):
        raise ConfigError(f"aggregate: mode={mode!r} must be 'max' or 'min'")
    keys: list[str] = []
    for j in jobs:
        keys += [k for k in j.overrides if k not in keys]
    if not any(_finite(j.figures.get(metric)) for j in jobs) and any(j.figures for j in jobs):
        avail = sorted({k for j in jobs for k, v in j.figures.items() if _finite(v)})
        msg = f"metric={metric!r} is in no summary.json; expected one of {', '.join(avail)}"
        if require_metric:
            raise ConfigError(f"aggregate: {msg}")
        log.warning("sweep summary: %s; groups are not ranked", msg)
    multi_sweep = len({j.path.parent for j in jobs}) > 1
    figure_keys = list(FIGURES)  # then stage-specific ones, so every row has the same columns
    for j in jobs:
        figure_keys += [k for k in j.figures if k not in figure_keys]
    rows = []
    for j in jobs:
        row: dict[str, Any] = {
            "sweep": _rel(j.path.parent, out_dir) if multi_sweep else j.path.parent.name,
            "job": j.path.name,
            "stage": j.stage,
        }
        row.update({k: j.value(k) for k in keys})
        row["seed"] = j.seed
        row.update({"status": j.status, "exit_code": j.exit_code, "error": j.error})
        has_result = j.status not in NO_RESULT
        row.update({k: j.figures.get(k) if has_result else None for k in figure_keys})
        row.update({f"checks_{s}": j.checks[s] for s in CHECK_STATUSES})
        row.update(
            {
                "checks_failed": " ".join(j.checks_failed),
                "resumed": j.resumed,
                "run_dir": _rel(j.path, out_dir),
            }
        )
        rows.append(row)
    group_keys = ["stage"] + keys
    varied = [k for k in group_keys if len({_key(r.get(k)) for r in rows}) > 1]
    fixed = {k: rows[0].get(k) for k in group_keys if k not in varied} if rows else {}
    groups = seed_groups(rows, group_keys, varied, metric, mode)
    codes = [r["exit_code"] for r in rows if isinstance(r["exit_code"], int)]
    failed = [
        dict(r, path=_rel(j.path, Path.cwd()))
        for r, j in zip(rows, jobs)
        if r["status"] in NO_RESULT
    ]
    return SweepTable(
        rows=rows,
        groups=groups,
        keys=keys,
        varied=varied,
        fixed=fixed,
        metric=metric,
        mode=mode,
        exit_code=max(codes, default=0),
        failed=failed,
    )


def _rel(p: Path, base: Path) -> str:
    try:
        return os.path.relpath(Path(p).resolve(), Path(base).resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(p).resolve())


def seed_groups(
    rows: Sequence[dict[str, Any]],
    group_keys: Sequence[str],
    varied: Sequence[str],
    metric: str,
    mode: str,
) -> list[dict[str, Any]]:
    """Jobs equal in every key but `seed`: mean, std (n-1) and count per figure, ranked.

    The recipe's warning applies: a difference within seed-to-seed noise is no difference.
    Each group is compared with the best by runner/checks/noise.py's rule across seeds
    (Welch's t-test, two-sided, p <= 0.05 -> "significant", else "not significant"), its
    `p_value` and `test` beside; with fewer than 2 seeds on either side the spread is
    unknown -> "n/a (1 seed)".
    """
    from runner.checks.noise import across_seeds

    buckets: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        buckets.setdefault(tuple(_key(r.get(k)) for k in group_keys), []).append(r)
    figures = [metric] + [f for f in GROUP_FIGURES if f != metric]
    groups = []
    values: dict[int, list[float]] = {}  # id(group) -> its finite values of `metric`
    for members in buckets.values():
        g: dict[str, Any] = {k: members[0].get(k) for k in varied}
        done = [r for r in members if _finite(r.get(metric))]
        g.update(
            {
                "n": len(done),
                "jobs": len(members),
                "failed": sum(r["status"] in NO_RESULT for r in members),
                "seeds": " ".join(str(r.get("seed")) for r in members),
            }
        )
        for f in figures:
            vals = [float(r[f]) for r in members if _finite(r.get(f))]
            g[f"{f}_mean"] = statistics.fmean(vals) if vals else None
            g[f"{f}_std"] = statistics.stdev(vals) if len(vals) >= 2 else None
        g["run_dirs"] = " ".join(r["run_dir"] for r in members)
        values[id(g)] = [float(r[metric]) for r in done]
        groups.append(g)
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted([g for g in groups if g["n"]], key=lambda g: sign * g[f"{metric}_mean"])
    unranked = [g for g in groups if not g["n"]]
    best = ranked[0] if ranked else None
    for i, g in enumerate(ranked, 1):
        g["rank"] = i
        g["delta_vs_best"] = g[f"{metric}_mean"] - best[f"{metric}_mean"]
        if g is best:
            g.update({"vs_best": "best", "p_value": None, "test": None})
            continue
        d = across_seeds(values[id(best)], values[id(g)], two_sided=True)
        g.update({"p_value": d.p_value, "test": d.test})
        if d.p_value is None:
            g["vs_best"] = "n/a (1 seed)"
        else:
            g["vs_best"] = "significant" if d.significant else "not significant"
    for g in unranked:
        g.update(
            {
                "rank": None,
                "delta_vs_best": None,
                "p_value": None,
                "test": None,
                "vs_best": "no result" if g["failed"] == g["jobs"] else f"no {metric}",
            }
        )
    order = (
        ["rank"]
        + list(varied)
        + ["n", "jobs", "failed", "vs_best", "delta_vs_best", "p_value", "test"]
    )
    return [{**{k: g.get(k) for k in order}, **g} for g in ranked + unranked]


# ----------------------------------------------------------------------------- writing
# marks report.html as this module's page: another page of that name (e.g. the tune
# sweeper's study report) is never overwritten; the table then goes to runs.html
MARKER = '<meta name="generator" content="runner.aggregate">'


def report_name(out_dir: Path) -> str:
    page = Path(out_dir) / "report.html"
    try:
        head = page.read_text(errors="replace")[:2000] if page.exists() else MARKER
        theirs = MARKER not in head and "<title>Sweep: " not in head  # (older pages: no marker)
    except OSError:
        theirs = False
    return "runs.html" if theirs else "report.html"


def summarize(
    paths: Sequence[Path],
    out_dir: Path,
    metric: str = "val_acc",
    mode: str = "max",
    require_metric: bool = True,
) -> SweepTable:
    """Read every job under `paths`, write runs.csv, groups.csv, report.html into out_dir."""
    from runner.output import RunDir

    out_dir = Path(out_dir)
    jobs = [load_job(p) for p in find_job_dirs(paths)]
    tab = build_table(jobs, out_dir, metric, mode, require_metric)
    run = RunDir(out_dir)
    run.write_csv("runs.csv", tab.rows)
    run.write_csv("groups.csv", tab.groups)
    figs = []
    if any(_finite(r.get(metric)) for r in tab.rows):
        figs.append(run.save_figure(metric_by_key(tab), f"{metric}_by_key"))
    html = render_report(tab, out_dir, figs, [str(p) for p in paths])
    html = html.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + MARKER, 1)
    tab.report = run.write_report(html, report_name(out_dir))
    run.write_json(SWEEP_FILE, {"exit_code": tab.exit_code, "jobs": tab.counts(), "metric": metric})
    return tab


def metric_by_key(tab: SweepTable):
    """The main metric against each varied key: every job as a dot, mean +/- std as a bar."""
    import matplotlib.pyplot as plt

    from runner.plots import laid_out  # (importing it selects the Agg backend)

    done = [r for r in tab.rows if _finite(r.get(tab.metric))]
    keys = [k for k in tab.varied if len({_key(r.get(k)) for r in done}) > 1] or ["seed"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys) + 0.8, 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r.get(key), float(r[tab.metric])) for r in tab.rows if _finite(r.get(tab.metric))]
        numeric = all(_finite(x) for x, _ in pts)
        values = sorted({x for x, _ in pts}, key=lambda v: v if numeric else str(v))
        pos = {v: (v if numeric else i) for i, v in enumerate(values)}
        ax.plot([pos[x] for x, _ in pts], [y for _, y in pts], "o", alpha=0.5, label="job")
        means = [statistics.fmean([y for x, y in pts if x == v]) for v in values]
        stds = [
            statistics.stdev(ys) if len(ys := [y for x, y in pts if x == v]) > 1 else 0.0
            for v in values
        ]
        ax.errorbar(
            [pos[v] for v in values], means, yerr=stds, fmt="s-", capsize=4, label="mean ± std"
        )
        if numeric and len(values) > 1 and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        if not numeric or len(values) <= 8:  # label the values tried, not a dense number line
            ax.set_xticks([pos[v] for v in values], [str(v) for v in values], rotation=20)
            ax.minorticks_off()
        ax.set(title=f"{tab.metric} by {key}", xlabel=key, ylabel=tab.metric)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{tab.metric} per varied key ({len(tab.rows)} jobs, "
        f"{'higher' if tab.mode == 'max' else 'lower'} is better)"
    )
    laid_out(fig)
    return fig


def _show(v: Any) -> str:
    """A config value as the user wrote it (0.0001, not fmt's 0.0001 -> '0.0001' rounding)."""
    return "null" if v is None else str(v)


def _pm(mean: Any, std: Any) -> str:
    from runner.report import fmt

    if mean is None:
        return "n/a"
    return fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")


def render_report(
    tab: SweepTable, out_dir: Path, figs: Sequence[str], sources: Sequence[str]
) -> str:
    from runner.report import Report, esc, images, kv_table, status_badge, table

    counts = tab.counts()
    best = tab.groups[0] if tab.groups and tab.groups[0].get("rank") == 1 else None
    rep = Report(
        f"Sweep: {len(tab.rows)} jobs, {len(tab.groups)} seed groups",
        subtitle=f"from {', '.join(sources)}  ·  ranked by {tab.metric} "
        f"({'higher' if tab.mode == 'max' else 'lower'} is better)",
        kpis={
            "jobs": len(tab.rows),
            "with results": len(tab.rows) - sum(counts.get(s, 0) for s in NO_RESULT),
            "failed": counts.get("failed", 0),
            "incomplete": counts.get("incomplete", 0),
            f"best {tab.metric}": (
                _pm(best[f"{tab.metric}_mean"], best[f"{tab.metric}_std"]) if best else "n/a"
            ),
        },
    )
    if tab.failed:
        rows = [
            {
                "job": f'<a href="{esc(r["run_dir"])}/runner.log">{esc(r["run_dir"])}</a>',
                "status": status_badge("fail" if r["status"] == "failed" else "skip")
                + " "
                + esc(r["status"]),
                "overrides": esc(" ".join(f"{k}={_show(r.get(k))}" for k in tab.varied + ["seed"])),
                "error": esc(r["error"] or ""),
            }
            for r in tab.failed
        ]
        rep.add(
            "Failed jobs",
            table(
                rows,
                ["job", "status", "overrides", "error"],
                raw=("job", "status", "overrides", "error"),
            ),
        )
    note = (
        "<p class='sub'>Jobs equal in every key but <code>seed</code> form a group. Each "
        "group is compared with the best by Welch's t-test over their seeds (two-sided): "
        "p &gt; 0.05 is <b>not significant</b>, a difference within seed noise.</p>"
    )
    if tab.groups and all(g["n"] < 2 for g in tab.groups):
        note += (
            "<p class='sub'>No group has two or more seeds: add e.g. <code>seed=1,2,3</code> "
            "to the sweep to measure seed noise.</p>"
        )
    fig_cols = [tab.metric] + [f for f in GROUP_FIGURES if f != tab.metric]
    grows = []
    for g in tab.groups:
        row = {
            k: g.get(k)
            for k in ["rank", "n", "failed", "vs_best", "delta_vs_best", "p_value", "test"]
        }
        row.update({k: _show(g.get(k)) for k in tab.varied})
        row.update({f: _pm(g[f"{f}_mean"], g[f"{f}_std"]) for f in fig_cols})
        row["seeds"] = g["seeds"]
        grows.append(row)
    gcols = [
        "rank",
        *tab.varied,
        "n",
        "failed",
        "vs_best",
        "delta_vs_best",
        "p_value",
        "test",
        *fig_cols,
        "seeds",
    ]
    rep.add("Seed groups", note + table(grows, gcols, sortable=True))
    if figs:
        rep.add(f"{tab.metric} per varied key", images(figs))
    run_cols = (
        ["sweep", "job", "stage"]
        + tab.keys
        + ["seed", "status", "error"]
        + [c for c in tab.rows[0] if c in FIGURES]
        + ["checks_pass", "checks_warn", "checks_fail", "resumed"]
    )
    run_cols = [c for c in dict.fromkeys(run_cols) if c not in tab.fixed or c in ("stage",)]
    rrows = []
    for r in tab.rows:
        rr = {c: r.get(c) for c in run_cols}
        rr.update({k: _show(r.get(k)) for k in tab.keys + ["seed"] if k in rr})
        rr["error"] = r.get("error") or ""
        report_file = out_dir / r["run_dir"] / "report.html"
        link = f"{r['run_dir']}/report.html" if report_file.exists() else f"{r['run_dir']}"
        rr["job"] = f'<a href="{esc(link)}">{esc(r["job"])}</a>'
        rr["status"] = esc(r["status"])
        rrows.append(rr)
    rep.add(
        "Runs",
        "<p class='sub'>Click a column header to sort; the job links to its report."
        "</p>" + table(rrows, run_cols, raw=("job",), sortable=True),
    )
    if tab.fixed:
        rep.add("Fixed across all jobs", kv_table(tab.fixed))
    return rep.render()


def console_table(tab: SweepTable, limit: int = 20) -> str:
    """The ranked groups and the failures, as plain text for the end of a sweep."""
    lines = []
    cols = ["rank"] + tab.varied + ["n", tab.metric, "vs_best"]
    body = []
    for g in tab.groups[:limit]:
        body.append(
            [str(g.get("rank") or "-")]
            + [_show(g.get(k)) for k in tab.varied]
            + [str(g["n"]), _pm(g[f"{tab.metric}_mean"], g[f"{tab.metric}_std"]), str(g["vs_best"])]
        )
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(cols)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    if len(tab.groups) > limit:
        lines.append(f"... {len(tab.groups) - limit} more groups in groups.csv")
    for r in tab.failed:
        lines.append(f"{r['status'].upper()}: {r['path']}: {r['error']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry points
def _failed_summary(sweep_dir: Path, why: str) -> None:
    from runner.output import RunDir

    try:
        RunDir(sweep_dir).write_json(SWEEP_FILE, {"exit_code": 1, "error": one_line(why)})
    except OSError as e:  # the folder itself is gone: the CLI reads no file and says 1 too
        log.error("sweep summary: cannot write %s: %s", sweep_dir / SWEEP_FILE, e)


class SweepSummary(Callback):
    """Hydra callback (conf/config.yaml `hydra.callbacks.sweep_summary`): summary at sweep end.

    Works for any sweeper and launcher: it reads the job directories, not return values.
    """

    def __init__(
        self, metric: str | None = None, mode: str | None = None, enabled: bool = True
    ) -> None:
        self.metric, self.mode, self.enabled = metric, mode, enabled

    def ranking(self, config) -> tuple[str, str]:
        """metric and mode: as set here, else the sweeper's objective (tune), else val_acc/max."""
        from omegaconf import OmegaConf

        sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
        sweeper = sweeper if sweeper is not None else {}
        metric = self.metric or sweeper.get("metric") or "val_acc"
        direction = sweeper.get("direction")
        if not isinstance(metric, str):  # several objectives: the table ranks by the first
            metric, direction = str(next(iter(metric))), next(iter(direction or []), None)
        elif direction is not None and not isinstance(direction, str):
            direction = next(iter(direction), None)
        mode = self.mode or {"maximize": "max", "minimize": "min"}.get(str(direction), None)
        if mode is None:  # losses go down, everything else (accuracy) up
            mode = "min" if "loss" in metric else "max"
        return metric, mode

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        if not self.enabled:
            return
        # read at the end: a sweeper may move the sweep (tune: its study folder), and Hydra
        # caches ${now:...}, so this is the folder the launcher used
        sweep_dir = Path(str(config.hydra.sweep.dir))
        from runner import jobs

        jobs.sweep_finished(sweep_dir)  # the CLI returns its sweep.json's exit code
        try:
            # a stage without the metric (e.g. inspect) still gets its table, unranked
            tab = summarize([sweep_dir], sweep_dir, *self.ranking(config), require_metric=False)
        except ConfigError as e:
            log.error("sweep summary: %s", e)
            _failed_summary(sweep_dir, str(e))
            return
        except Exception:  # the jobs' own results are on disk; never lose them to a summary bug
            log.exception(
                "sweep summary failed; rebuild it with: python -m runner aggregate %s", sweep_dir
            )
            _failed_summary(sweep_dir, "the sweep summary failed (see the log)")
            return
        log.info("sweep summary (%d jobs): %s\n%s", len(tab.rows), tab.report, console_table(tab))
        if tab.failed:
            log.error(
                "%d of %d jobs did not finish (listed above, and in %s)",
                len(tab.failed),
                len(tab.rows),
                sweep_dir / "runs.csv",
            )


def aggregate_main(argv: Sequence[str]) -> int:
    """`python -m runner aggregate DIR... [--out DIR] [--metric val_acc] [--mode max]`."""
    p = argparse.ArgumentParser(
        prog="python -m runner aggregate",
        description="(Re)build the sweep summary (runs.csv, groups.csv, report.html) for sweep "
        "or run directories; several sweeps give one combined table.",
    )
    p.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        help="sweep directories, run directories, or folders holding them (e.g. multirun/)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write; default: the directory itself when one sweep directory "
        "is given, else multirun/aggregate/<date>/<time>",
    )
    p.add_argument("--metric", default="val_acc", help="summary.json figure to rank by")
    p.add_argument(
        "--mode",
        default="max",
        choices=("max", "min"),
        help="max: higher is better (accuracy); min: lower is better (loss)",
    )
    args = p.parse_args(list(argv))
    out = args.out
    if out is None:
        if len(args.dirs) == 1 and args.dirs[0].is_dir() and not is_job_dir(args.dirs[0]):
            out = args.dirs[0]
        else:
            out = Path("multirun") / "aggregate" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    if is_job_dir(out):
        print(
            f"config error: --out {out} is a run directory; its report.html would be "
            "overwritten: choose another folder",
            flush=True,
        )
        return 2
    try:
        tab = summarize(args.dirs, out, args.metric, args.mode)
    except ConfigError as e:
        print(f"config error: {e}", flush=True)
        return e.exit_code
    print(console_table(tab))
    print(
        f"{len(tab.rows)} jobs, {len(tab.groups)} seed groups -> {out / 'runs.csv'}, "
        f"{out / 'groups.csv'}, {tab.report}"
    )
    # 1: some job failed (or failed a check); 2 stays for bad input to this command
    return 1 if tab.exit_code or tab.failed else 0
