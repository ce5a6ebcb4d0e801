"""The one module that writes a run directory (DESIGN.md's contract), and reads its JSON back.

metrics.csv, summary.json, checks.json, plots/*.png, report.html, checkpoints/*.pt.
Every write is atomic (temp file + rename) so a kill never leaves a truncated file, and
nothing here overwrites a finished run's results unless it is that run being resumed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

METRIC_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "wall_s",
    "epoch_s",
    "images_per_s",
]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def _atomic_write(path: Path, write) -> None:
    """`write(file)` into a temp file beside `path`, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/Inf become null, tuples lists, numpy/torch scalars floats."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _clean(obj.item())
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    return str(obj)


def read_json(p: Path) -> Any:
    """A JSON file of a run directory (summary.json, study.json, checks.json, ...), or None
    when it is missing or unreadable: the one reader of a run's JSON."""
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None


class RunDir:
    """A run's output directory; all writes go through here."""

    def __init__(self, path: Path, enabled: bool = True):
        """`enabled=False` (DDP ranks other than 0): same API, nothing is written."""
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)
        self.plots = self.path / "plots"
        self.checkpoints = self.path / "checkpoints"

    def _write(self, path: Path, data: bytes) -> None:
        if self.enabled:
            _atomic_write_bytes(path, data)

    # -- queries
    def finished(self) -> bool:
        return (self.path / "summary.json").exists()

    def rel(self, p: Path) -> str:
        return str(Path(p).relative_to(self.path))

    # -- metrics.csv
    def write_metrics(
        self, rows: Iterable[Dict[str, Any]], extra: Optional[List[str]] = None
    ) -> None:
        """(Re)write metrics.csv from the full history (history lives in the checkpoint)."""
        cols = METRIC_COLUMNS + [c for c in (extra or []) if c not in METRIC_COLUMNS]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    k: (
                        ""
                        if isinstance(v, float) and not math.isfinite(v)
                        else (f"{v:.6g}" if isinstance(v, float) else v)
                    )
                    for k, v in r.items()
                }
            )
        self._write(self.path / "metrics.csv", buf.getvalue().encode())

    # -- JSON files
    def write_json(self, name: str, obj: Any) -> Path:
        p = self.path / name
        self._write(p, (json.dumps(_clean(obj), indent=2) + "\n").encode())
        return p

    def write_summary(self, summary: Dict[str, Any]) -> Path:
        return self.write_json("summary.json", summary)

    def write_checks(self, verdicts: List[Any]) -> Path:
        return self.write_json(
            "checks.json", [v.to_dict() if hasattr(v, "to_dict") else v for v in verdicts]
        )

    def write_csv(
        self, name: str, rows: List[Dict[str, Any]], columns: Optional[List[str]] = None
    ) -> Path:
        """rows as a CSV; `columns` first (the header of an empty table), then any others."""
        cols: List[str] = list(columns or [])
        for r in rows:
            cols += [k for k in r if k not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows([_clean(r) for r in rows])
        p = self.path / name
        self._write(p, buf.getvalue().encode())
        return p

    # -- plots
    def save_figure(self, fig, name: str) -> str:
        """Save a matplotlib figure as plots/<name>.png; returns the path relative to the run."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        p = self.plots / f"{name}.png"
        self._write(p, buf.getvalue())
        return self.rel(p)

    # -- text files (a sweep's best.yaml)
    def write_text(self, name: str, text: str) -> Path:
        p = self.path / name
        self._write(p, text.encode())
        return p

    # -- report
    def write_report(self, html: str, name: str = "report.html") -> Path:
        p = self.path / name
        self._write(p, html.encode())
        return p

    # -- checkpoints
    def save_checkpoint(self, payload: dict[str, Any], name: str = "last.pt") -> Path:
        """Serialise straight into the temp file (no in-memory copy of a large checkpoint);
        runner.checkpoint.CheckpointWriter calls this on its background thread."""
        import torch

        p = self.checkpoints / name
        if self.enabled:
            _atomic_write(p, lambda f: torch.save(payload, f))
        return p
