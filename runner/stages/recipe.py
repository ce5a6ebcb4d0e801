"""stage=recipe: inspect -> baseline -> overfit -> regularize -> tune -> squeeze, in order.

Each stage is its own `python -m runner stage=<name>` (its own Hydra composition, run
directory `<k>-<name>/` and report) with this command's overrides. Each training stage
starts from the previous one's outcome (`from=<dir>`, runner/lineage.py: overfit from the
baseline run, regularize from overfit, tune from the kept ladder); squeeze gets the ladder
and the study as candidates. A non-zero exit (a failed check, a config error) is a failed
gate: the recipe stops there with the reason unless `stage.params.continue_on_fail=true`.
Writes summary.json ({"stages": [...], "val_acc": <final>, "final": {...}}), recipe.csv and
a report with a row per stage (what changed, val acc, delta, failed checks, link).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from runner.checks import Verdict
from runner.stages.common import Context, finish, stage_params

log = logging.getLogger("runner")

DEFAULTS: dict[str, Any] = {"stages": ["inspect", "baseline", "overfit", "regularize", "tune",
                                       "squeeze"],
                            "continue_on_fail": False, "per_stage": {}}
# stages whose outcome the next training stage starts from
TRAINING = ("baseline", "train", "overfit", "regularize", "tune")


def params(cfg) -> dict[str, Any]:
    return stage_params(cfg, DEFAULTS)


def passthrough(overrides: list[str]) -> list[str]:
    """The command's overrides every stage gets: not the recipe's own stage/hydra ones."""
    return [o for o in overrides
            if not o.lstrip("+~").startswith(("stage=", "stage.", "hydra.", "hydra/"))]


def _read(d: Path, name: str):
    try:
        return json.loads((d / name).read_text())
    except (OSError, ValueError):
        return None


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else "null" if v is None else str(v)


def changes(name: str, d: Path, s: dict) -> str:
    """One line: what this stage changed relative to the previous one."""
    if name == "inspect":
        return "looked at the data (no training)"
    if name == "squeeze":
        parts = [f"ensemble of {len(s.get('members') or [])}"]
        if s.get("adopted"):
            parts.insert(0, f"adopted: {s['adopted']['what']}")
        seeds = (s.get("seeds") or {}).get("winner")
        if seeds:
            parts.append(f"winner over {len(seeds['seeds'])} seeds {seeds['mean']:.4f} +/- {seeds['std']:.4f}")
        if s.get("continued"):
            parts.append("left training: " + ("val loss still improving" if s["continued"]["val_loss_improved"]
                                              else "val loss no longer improving"))
        return "; ".join(parts)
    if name == "tune":
        study = _read(d, "study.json") or {}
        best = (study.get("best") or {}).get("params") or {}
        return (f"{study.get('trials', 0)} trial(s); best " +
                " ".join(f"{k}={_fmt(v)}" for k, v in best.items())) if study else ""
    lin = _read(d, "lineage.json") or {}
    parts = [f"{k}={_fmt(v)}" for k, v in (lin.get("from_stage") or {}).items()
             if not k.startswith(("checks.", "inspect."))]
    if name == "regularize":
        parts.append("kept: " + (" ".join(s.get("kept_overrides") or []) or "nothing"))
    if name == "baseline" or not parts:
        parts.insert(0, f"{s.get('model', '?')}, {s.get('epochs', '?')} epochs")
    return " ".join(parts)


def final_model(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The model to adopt: what squeeze adopted, else the last passing training stage's outcome."""
    from runner.lineage import outcome

    for r in reversed(rows):
        if r["exit_code"] != 0 or r["stage"] not in (*TRAINING, "squeeze"):
            continue
        d = Path(r["dir"])
        what = None
        if r["stage"] == "squeeze":
            ad = (_read(d, "summary.json") or {}).get("adopted") or {}
            run = ad.get("run")
            if not run:
                continue
            if isinstance(run, list):  # an ensemble: its best member is the single model
                what = (f"squeeze adopted an ensemble of {len(run)} (val acc {ad['val_acc']:.4f}); "
                        f"the config and weights of its best member")
                run = run[0]
            else:
                what = f"squeeze adopted the {ad['what']} (val acc {ad['val_acc']:.4f})"
            d = Path(run)
        try:
            o = outcome(d)
        except Exception:  # noqa: BLE001 -- a stage without an outcome: look further back
            continue
        return {"stage": r["stage"], "run": str(d), "config": str(o.config_file),
                "weights": str(o.weights) if o.weights else None, "what": what or o.note}
    return None


def run(cfg, ctx: Context) -> int:
    from runner.report import esc, table

    p = params(cfg)
    common = passthrough(list(ctx.overrides))
    rows: list[dict[str, Any]] = []
    dirs: dict[str, Path] = {}
    done: list[tuple[str, Path, int]] = []
    stopped = None
    prev_acc = None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), ctx.original_cwd,
                                         env.get("PYTHONPATH", "")])
    env.pop("HYDRA_FULL_ERROR", None)
    for k, name in enumerate(p["stages"], start=1):
        d = ctx.run.path / f"{k}-{name}"
        args = [f"stage={name}", *common, *[str(o) for o in (p["per_stage"] or {}).get(name, [])]]
        # the last training stage that passed: this one starts from its outcome
        prev = next((dd for x, dd, c in reversed(done) if x in TRAINING and c == 0), None) \
            if name in TRAINING and name != "baseline" else None
        if prev is not None and not any(a.lstrip("+").startswith("from=") for a in args):
            args.append(f"from={prev}")
        if name == "tune":
            args = ["-m", *args, f"hydra.sweep.dir={d}"]
        else:
            args.append(f"hydra.run.dir={d}")
        if name == "squeeze":
            srcs = [dirs[s] for s in ("regularize", "tune", "overfit") if s in dirs]
            if srcs:
                args.append(f"stage.params.from={srcs[0]}")
                if len(srcs) > 1:
                    args.append("stage.params.runs=[" + ",".join(str(s) for s in srcs[1:]) + "]")
        log.info("recipe: %d/%d %s: python -m runner %s", k, len(p["stages"]), name, " ".join(args))
        code = subprocess.run([sys.executable, "-m", "runner", *args], cwd=ctx.original_cwd,
                              env=env, check=False).returncode
        dirs[name] = d
        done.append((name, d, code))
        s = _read(d, "summary.json") or {}
        checks = _read(d, "checks.json") or []
        acc = s.get("best_val_acc", s.get("val_acc")) if name != "squeeze" else s.get("val_acc")
        if name == "regularize":
            acc = s.get("ladder_val_acc", acc)
        if name == "tune":
            study = _read(d, "study.json") or {}
            acc = (study.get("best") or {}).get("value")
        row = {"stage": name, "exit_code": code, "change": changes(name, d, s), "val_acc": acc,
               "delta": (acc - prev_acc) if isinstance(acc, (int, float)) and
               isinstance(prev_acc, (int, float)) else None,
               "checks_failed": [c["name"] for c in checks if c.get("status") == "fail"]
               or s.get("checks_failed") or [],
               "dir": str(d), "report": f"{d.name}/report.html"}
        rows.append(row)
        if isinstance(acc, (int, float)):
            prev_acc = acc
        if code != 0:
            reason = (f"stage {name} exited {code}"
                      + (f" (failed: {', '.join(row['checks_failed'])})" if row["checks_failed"] else ""))
            log.warning("recipe: %s", reason)
            if not p["continue_on_fail"]:
                stopped = reason + "; the recipe stops here (stage.params.continue_on_fail=true goes on)"
                break

    final = next((r["val_acc"] for r in reversed(rows) if isinstance(r["val_acc"], (int, float))), None)
    final_run = final_model(rows)
    ctx.run.write_csv("recipe.csv", [{**r, "checks_failed": " ".join(r["checks_failed"])} for r in rows])
    v = Verdict("recipe.gates", "fail" if stopped else "pass", value=len(rows),
                expected=f"{len(p['stages'])} stage(s) pass",
                message=stopped or f"all {len(rows)} stage(s) ran"
                + ("" if all(r["exit_code"] == 0 for r in rows) else " (some failed; continue_on_fail)"))
    summary = {"stage": "recipe", "name": cfg.name, "val_acc": final, "val_loss": None,
               "stages": [{"stage": r["stage"], "val_acc": r["val_acc"],
                           "checks_failed": r["checks_failed"], "dir": r["dir"],
                           "exit_code": r["exit_code"]} for r in rows],
               "final": final_run,
               "stopped": stopped, "checks_failed": ["recipe.gates"] if stopped else [],
               "run_dir": str(ctx.run.path)}
    html_rows = [{**r, "report": f'<a href="{esc(r["report"])}">{esc(r["stage"])} report</a>',
                  "checks_failed": ", ".join(r["checks_failed"])} for r in rows]
    body = table(html_rows, ["stage", "change", "exit_code", "val_acc", "delta", "checks_failed",
                             "report"], raw=["report"])
    if stopped:
        body = f"<p><b>{esc(stopped)}</b></p>" + body
    if final_run:
        body += (f"<p>Final model, from the {esc(final_run['stage'])} stage: {esc(final_run['what'])}. "
                 f"Config <code>{esc(final_run['config'])}</code>; weights "
                 f"<code>{esc(str(final_run['weights']))}</code>. Continue from it with "
                 f"<code>python -m runner stage=train from={esc(str(ctx.run.path))}</code>.</p>")
    return finish(cfg, ctx, None, [v], summary, sections=[("Stages", body)],
                  title=f"recipe on {cfg.data.kind}")
