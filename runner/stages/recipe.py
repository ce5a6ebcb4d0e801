"""stage=recipe: inspect -> baseline -> overfit -> regularize -> [tune ->] squeeze, in order.

Each stage is its own `python -m runner stage=<name>` (its own Hydra composition, run
directory `<k>-<name>/` and report) with this command's overrides; squeeze gets
`stage.params.from=<regularize dir>` (plus the tune sweep dir). A non-zero exit (a failed
check, a config error) is a failed gate: the recipe stops there with the reason unless
`stage.params.continue_on_fail=true`. Writes summary.json
({"stages": [...], "val_acc": <final>}), recipe.csv and a report with a row per stage.
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

DEFAULTS: dict[str, Any] = {"stages": ["inspect", "baseline", "overfit", "regularize", "squeeze"],
                            "continue_on_fail": False, "per_stage": {}}


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


def run(cfg, ctx: Context) -> int:
    from runner.report import esc, table

    p = params(cfg)
    common = passthrough(list(ctx.overrides))
    rows: list[dict[str, Any]] = []
    dirs: dict[str, Path] = {}
    stopped = None
    prev_acc = None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), ctx.original_cwd,
                                         env.get("PYTHONPATH", "")])
    env.pop("HYDRA_FULL_ERROR", None)
    for k, name in enumerate(p["stages"], start=1):
        d = ctx.run.path / f"{k}-{name}"
        args = [f"stage={name}", *common, *[str(o) for o in (p["per_stage"] or {}).get(name, [])]]
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
        s = _read(d, "summary.json") or {}
        checks = _read(d, "checks.json") or []
        acc = s.get("best_val_acc", s.get("val_acc")) if name != "squeeze" else s.get("val_acc")
        if name == "regularize":
            acc = s.get("ladder_val_acc", acc)
        row = {"stage": name, "exit_code": code, "val_acc": acc,
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
    ctx.run.write_csv("recipe.csv", [{**r, "checks_failed": " ".join(r["checks_failed"])} for r in rows])
    v = Verdict("recipe.gates", "fail" if stopped else "pass", value=len(rows),
                expected=f"{len(p['stages'])} stage(s) pass",
                message=stopped or f"all {len(rows)} stage(s) ran"
                + ("" if all(r["exit_code"] == 0 for r in rows) else " (some failed; continue_on_fail)"))
    summary = {"stage": "recipe", "name": cfg.name, "val_acc": final, "val_loss": None,
               "stages": [{"stage": r["stage"], "val_acc": r["val_acc"],
                           "checks_failed": r["checks_failed"], "dir": r["dir"],
                           "exit_code": r["exit_code"]} for r in rows],
               "stopped": stopped, "checks_failed": ["recipe.gates"] if stopped else [],
               "run_dir": str(ctx.run.path)}
    html_rows = [{**r, "report": f'<a href="{esc(r["report"])}">{esc(r["stage"])} report</a>',
                  "checks_failed": ", ".join(r["checks_failed"])} for r in rows]
    body = table(html_rows, ["stage", "exit_code", "val_acc", "delta", "checks_failed", "report"],
                 raw=["report"])
    if stopped:
        body = f"<p><b>{esc(stopped)}</b></p>" + body
    return finish(cfg, ctx, None, [v], summary, sections=[("Stages", body)],
                  title=f"recipe on {cfg.data.kind}")
