#!/usr/bin/env python3
"""Validate a run directory against the contract in DESIGN.md.

usage: python ../shared/tools/check_rundir.py RUN_DIR [RUN_DIR ...]
Exit 0 when every directory holds to the contract, 1 otherwise (each problem printed).
Tests may call it too: `subprocess.run([sys.executable, path, run_dir], check=True)`.
"""

import csv
import json
import re
import sys
from pathlib import Path

STATUSES = {"pass", "warn", "fail", "skip"}
CHECK_KEYS = {"name", "status", "value", "expected", "message", "artifacts"}
SUMMARY_KEYS = {"stage", "val_acc", "val_loss"}
METRIC_COLUMNS = {"epoch", "step", "train_loss", "val_loss", "val_acc", "lr", "wall_s"}


def problems(run: Path):
    out = []
    if not run.is_dir():
        return [f"{run}: not a directory"]
    s = run / "summary.json"
    try:
        summary = json.loads(s.read_text())
        missing = SUMMARY_KEYS - set(summary)
        if missing:
            out.append(f"summary.json lacks {sorted(missing)}")
    except FileNotFoundError:
        out.append("no summary.json")
    except json.JSONDecodeError as e:
        out.append(f"summary.json is not JSON: {e}")
    c = run / "checks.json"
    try:
        checks = json.loads(c.read_text())
        if not isinstance(checks, list):
            out.append("checks.json is not a list")
            checks = []
        for i, ch in enumerate(checks):
            if not isinstance(ch, dict):
                out.append(f"checks.json[{i}] is not an object")
                continue
            if CHECK_KEYS - set(ch):
                out.append(
                    f"checks.json[{i}] ({ch.get('name')}) lacks {sorted(CHECK_KEYS - set(ch))}"
                )
            if ch.get("status") not in STATUSES:
                out.append(f"checks.json[{i}] ({ch.get('name')}) has status {ch.get('status')!r}")
            if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", str(ch.get("name", ""))):
                out.append(f"checks.json[{i}] name {ch.get('name')!r} is not 'group.name'")
            for a in ch.get("artifacts") or []:
                if not (run / a).exists():
                    out.append(f"checks.json[{i}] ({ch.get('name')}) artifact missing: {a}")
        names = [ch.get("name") for ch in checks if isinstance(ch, dict)]
        dups = {n for n in names if names.count(n) > 1}
        if dups:
            out.append(f"checks.json repeats {sorted(dups)}")
    except FileNotFoundError:
        out.append("no checks.json")
    except json.JSONDecodeError as e:
        out.append(f"checks.json is not JSON: {e}")
    m = run / "metrics.csv"
    if m.exists():
        with m.open() as f:
            header = set(next(csv.reader(f), []))
        if METRIC_COLUMNS - header:
            out.append(f"metrics.csv lacks columns {sorted(METRIC_COLUMNS - header)}")
    elif summary_stage(run) not in {"inspect", "recipe"}:
        out.append("no metrics.csv")
    r = run / "report.html"
    if not r.exists():
        out.append("no report.html")
    else:
        html = r.read_text(errors="replace")
        for src in re.findall(r'<img[^>]+src="([^"]+)"', html):
            if not src.startswith("data:") and not (run / src).exists():
                out.append(f"report.html shows a missing image: {src}")
    last = run / "checkpoints" / "last.pt"
    if last.exists():
        try:
            import torch

            torch.load(last, map_location="cpu", weights_only=True)
        except ImportError:
            pass
        except Exception as e:  # the contract says: loadable with weights_only=True
            out.append(
                f"checkpoints/last.pt does not load with weights_only=True: {str(e).splitlines()[0]}"
            )
    return out


def summary_stage(run: Path):
    try:
        return json.loads((run / "summary.json").read_text()).get("stage")
    except Exception:
        return None


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    bad = 0
    for d in argv:
        ps = problems(Path(d))
        for p in ps:
            print(f"{d}: {p}")
        bad += bool(ps)
    print(f"{len(argv) - bad} of {len(argv)} run directories hold to the contract")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
