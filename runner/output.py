"""The one module that writes a run directory (DESIGN.md's contract), and reads its JSON back.

metrics.csv, summary.json, checks.json, plots/*.png, report.html, checkpoints/*.pt.
Every write is atomic (temp file + rename) so a kill never leaves a truncated file, and
nothing here overwrites a finished run's results unless it is that run being resumed.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from runner.errors import ConfigError, RunFileError

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
    # the evaluation's balanced accuracy and macro-F1 (runner/metrics.py; `metric` may select on them)
    "val_balanced_acc",
    "val_macro_f1",
]


def _atomic_write_bytes(path: Path, data: bytes, root: Optional[Path] = None) -> None:
    _atomic_write(path, lambda f: f.write(data), root)


class _Recording:
    """The file object a writer sees: keeps the first OSError of a write. torch.save turns its
    file object's error into `RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos`, which names neither the condition nor the file; the OSError does."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self._f.flush()


def _create_temp(path: Path) -> tuple:
    """A new temp file beside `path`, created 0o666 less the umask, as open() creates files
    (mkstemp's 0600 would hide the runs of a shared output folder from the group)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def _atomic_write(path: Path, write, root: Optional[Path] = None) -> None:
    """`write(file)` into a temp file beside `path`, fsync, then rename over `path`; any step's
    OSError is raised as itself and the temp file removed. `root`: the run directory, which
    must still exist (only folders below it are created: a run whose directory was removed
    does not write a new one piecemeal)."""
    if root is not None and not root.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the run directory no longer exists", str(root))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as raw:
            f = _Recording(raw)
            try:
                write(f)
            except Exception as e:
                if f.error is not None and not isinstance(e, OSError):
                    raise f.error from e
                raise
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _is_temp(p: Path) -> bool:
    """A temp file of _atomic_write (`.<name>.<8 hex>.tmp`; mkstemp's 8 characters before)."""
    parts = p.name.split(".")
    return p.name.startswith(".") and p.suffix == ".tmp" and len(parts) >= 4 and len(parts[-2]) == 8


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


def csv_bytes(rows: List[Dict[str, Any]], columns: Optional[List[str]] = None) -> bytes:
    """rows as CSV: `columns` first (the header of an empty table), then any others."""
    cols: List[str] = list(columns or [])
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows([_clean(r) for r in rows])
    return buf.getvalue().encode()


def write_csv_file(
    path: Path, rows: List[Dict[str, Any]], columns: Optional[List[str]] = None
) -> Path:
    """A CSV outside a run directory (predict's predictions), written atomically; `columns`
    first, then any others the rows have. A write that fails is a RunFileError (exit 3) naming
    the file and the condition; a file already at `path` is left as it was."""
    try:
        _atomic_write_bytes(Path(path), csv_bytes(rows, columns))
    except OSError as e:
        raise RunFileError(
            path,
            e,
            "Nothing was written (a file already there is as it was: writes go through a "
            "temp file and a rename)",
        ) from e
    return Path(path)


def read_json(p: Path) -> Any:
    """A JSON file of a run directory (summary.json, study.json, checks.json, ...), or None
    when it is missing or unreadable: the one reader of a run's JSON."""
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- reading back
# Run files read back are validated: a file that is there but malformed (empty, cut short,
# edited) is a ConfigError naming it and what is wrong, never taken for a finished run.
_NUMBER = (int, float)
SUMMARY_FIELDS: Dict[str, tuple] = {
    "stage": (str,),
    "status": (str,),
    "exit_code": (int,),
    "val_acc": _NUMBER,
    "val_loss": _NUMBER,
    "train_loss": _NUMBER,
    "train_acc": _NUMBER,
    "best_val_acc": _NUMBER,
    "best_val_loss": _NUMBER,
    "epochs": (int,),
    "steps": (int,),
    "params": (int,),
    "wall_s": _NUMBER,
    "checks_failed": (list,),
    "data": (dict,),
}
CHECK_STATUSES = ("pass", "warn", "fail", "skip")


def _json_file(p: Path, what: str) -> Any:
    try:
        text = Path(p).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read {what} ({e})") from e
    if not text.strip():
        raise ConfigError(f"{p} is empty: not {what}{_MALFORMED}")
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{p} is not valid JSON ({e}): not {what}{_MALFORMED}") from e


# what to do about a malformed run file (the runner writes each atomically: it was cut by a
# full disk outside the runner, copied half, or edited)
_MALFORMED = (
    "; the runner never writes a partial file, so it was cut short or changed outside the "
    "runner: restore it, or remove it (and the run counts as unfinished)"
)


def _typed(obj: Dict[str, Any], fields: Dict[str, tuple]) -> List[str]:
    """The fields of `obj` whose value has the wrong type (None is allowed: NaN is written so)."""
    bad = []
    for k, types in fields.items():
        v = obj.get(k)
        if v is None:
            continue
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            want = " or ".join(t.__name__ for t in types)
            bad.append(f"{k}={v!r:.60} is not {want}")
    return bad


def read_summary(run_dir: Path) -> Optional[Dict[str, Any]]:
    """summary.json of a run: None when there is none; a ConfigError naming the file when it
    is empty, no JSON object, has no stage, or a field of the wrong type."""
    p = Path(run_dir) / "summary.json"
    obj = _json_object(p, "a run summary")
    if obj is None:
        return None
    problems = ([] if obj.get("stage") else ["no stage"]) + _typed(obj, SUMMARY_FIELDS)
    if problems:
        raise ConfigError(f"{p} is not a complete run summary: {'; '.join(problems)}{_MALFORMED}")
    return obj


def read_checks(run_dir: Path) -> List[Dict[str, Any]]:
    """checks.json: a list of verdicts (name, status one of pass/warn/fail/skip); [] when there
    is none; a ConfigError naming the file and the first bad entry otherwise."""
    p = Path(run_dir) / "checks.json"
    if not p.exists():
        return []
    obj = _json_file(p, "a list of verdicts")
    if not isinstance(obj, list):
        raise ConfigError(f"{p} holds {type(obj).__name__}, not a list of verdicts{_MALFORMED}")
    for i, v in enumerate(obj):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str):
            raise ConfigError(f"{p}: entry {i} is not a verdict with a name{_MALFORMED}")
        if v.get("status") not in CHECK_STATUSES:
            raise ConfigError(
                f"{p}: {v['name']}: status {v.get('status')!r} is not one of "
                f"{', '.join(CHECK_STATUSES)}{_MALFORMED}"
            )
    return obj


def read_lineage(run_dir: Path) -> Optional[Dict[str, Any]]:
    """lineage.json: a JSON object, None when there is none."""
    return _json_object(Path(run_dir) / "lineage.json", "a lineage record")


def _json_object(p: Path, what: str) -> Optional[Dict[str, Any]]:
    """A run file that holds one JSON object: None when absent, a ConfigError naming it when
    it is not one."""
    if not p.exists():
        return None
    obj = _json_file(p, what)
    if not isinstance(obj, dict):
        raise ConfigError(f"{p} holds {type(obj).__name__}, not a JSON object{_MALFORMED}")
    return obj


def read_metrics(run_dir: Path) -> List[Dict[str, Any]]:
    """metrics.csv's rows, numbers as floats (empty cells None); [] when there is none; a
    ConfigError naming the file, the line and the column of a contract column's value that
    is no number."""
    p = Path(run_dir) / "metrics.csv"
    if not p.exists():
        return []
    try:
        text = p.read_text()
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{p}: cannot read metrics ({e}){_MALFORMED}") from e
    if "epoch" not in text.split("\n", 1)[0].strip().split(","):
        raise ConfigError(f"{p} has no header line with an epoch column{_MALFORMED}")
    out = []
    for line, row in enumerate(rows, start=2):
        parsed = {}
        for k, v in row.items():
            if k is None or v is None:
                raise ConfigError(f"{p}: line {line} has more or fewer cells than the header")
            try:
                parsed[k] = float(v) if v != "" else None
            except ValueError:
                if k in METRIC_COLUMNS:  # a stage's own extra column may hold text
                    raise ConfigError(
                        f"{p}: line {line}, column {k}: {v!r:.40} is not a number{_MALFORMED}"
                    ) from None
                parsed[k] = v
        out.append(parsed)
    return out


def read_overrides(p: Path) -> List[str]:
    """A run's recorded overrides (.hydra/overrides.yaml): a list of strings; [] when missing."""
    import yaml

    p = Path(p)
    if not p.exists():
        return []
    try:
        obj = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{p} is not valid YAML ({str(e).splitlines()[0]}){_MALFORMED}") from e
    if obj is None:
        return []
    if not isinstance(obj, list) or not all(isinstance(o, str) for o in obj):
        raise ConfigError(f"{p}: expected a list of overrides (key=value strings){_MALFORMED}")
    return obj


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
        self._saved: Dict[str, tuple] = {}  # checkpoint name -> (epoch, step) written here

    def _write(self, path: Path, data: bytes) -> None:
        if self.enabled:
            self._atomic(path, lambda f: f.write(data))

    def _atomic(self, path: Path, write) -> None:
        """One atomic write; an OSError becomes a RunFileError naming the file, the condition
        and what survived (exit 3)."""
        from runner.errors import RunFileError

        try:
            _atomic_write(path, write, root=self.path)
        except RunFileError:
            raise
        except OSError as e:
            raise RunFileError(path, e, self.survived()) from e

    def survived(self) -> str:
        """What a failed write leaves behind: the newest complete last.pt and how to go on."""
        last = self.checkpoints / "last.pt"
        if not last.is_file():
            return "No checkpoint of this run was saved: there is nothing to resume; run it again"
        at = self._saved.get("last.pt") or _checkpoint_position(last)
        where = f"epoch {at[0]}, step {at[1]}" if at else "position unreadable"
        return (
            f"Nothing was truncated; last good checkpoint: {last} ({where}); once fixed, "
            f"resume with: python -m runner resume={self.path}"
        )

    def clean_temps(self) -> List[Path]:
        """Remove temp files an earlier process left when it was killed inside a write (its
        previous files are intact); call only while owning the directory (lock_run_dir)."""
        gone = []
        for folder in (self.path, self.checkpoints, self.plots):
            for p in folder.glob(".*.tmp") if folder.is_dir() else []:
                if _is_temp(p):
                    with contextlib.suppress(OSError):
                        p.unlink()
                        gone.append(p)
        return gone

    # -- queries
    def finished(self) -> bool:
        """summary.json is there and whole (a malformed one: ConfigError naming it)."""
        return read_summary(self.path) is not None

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
        p = self.path / name
        self._write(p, csv_bytes(rows, columns))
        return p

    # -- plots
    def save_figure(self, fig, name: str) -> str:
        """Save a matplotlib figure as plots/<name>.png; returns the path relative to the run."""
        import matplotlib.pyplot as plt
        from matplotlib.text import Text

        buf = io.BytesIO()
        # class and file names are text, never mathtext: a folder named `$\foo$` would make
        # the draw raise (the labels made while drawing, e.g. ticks, take the rc setting)
        try:
            with plt.rc_context({"text.parse_math": False}):
                for t in fig.findobj(Text):
                    t.set_parse_math(False)
                # a figure laid out already (runner/plots.py laid_out) fits as it is
                tight = None if getattr(fig, "runner_laid_out", False) else "tight"
                fig.savefig(buf, format="png", dpi=100, bbox_inches=tight)
        finally:
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
            self._atomic(p, lambda f: torch.save(payload, f))
            loop = payload.get("loop") or {}
            self._saved[name] = (loop.get("epoch"), loop.get("step"))
        return p

    def save_model(self, payload: dict[str, Any], name: str) -> Path:
        """A model file beside summary.json (squeeze's ensemble.pt), written atomically."""
        import torch

        p = self.path / name
        if self.enabled:
            self._atomic(p, lambda f: torch.save(payload, f))
        return p


def _checkpoint_position(path: Path) -> Optional[tuple]:
    """(epoch, step) of a checkpoint's loop state, None when it cannot be read."""
    import torch

    try:
        loop = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["loop"]
        return int(loop["epoch"]), int(loop["step"])
    except Exception:  # noqa: BLE001 -- only for a message: unreadable is said so
        return None


# ----------------------------------------------------------------------------- ownership
LOCK_FILE = ".runner.lock"
# squeeze's adopted ensemble, one file (runner/ensemble.py reads and writes it)
ENSEMBLE_FILE = "ensemble.pt"
# this process's run-directory locks (resolved path -> [fd, depth]): re-entrant, so a recipe's
# stages and a ladder's rungs, run in this process in directories of their own or below the
# parent's, never refuse themselves. Process state by nature: an flock belongs to a process.
_OWNED: Dict[str, list] = {}


def lock_run_dir(run_dir: Path) -> None:
    """Own `run_dir` (an flock on its .runner.lock, released by the kernel on any exit,
    SIGKILL included), or a ConfigError naming the process that does (pid, host)."""
    import fcntl
    import socket
    import time

    from runner.errors import RunDirInUse, RunFileError

    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _OWNED:
        _OWNED[key][1] += 1
        return
    p = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise RunFileError(p, e, "Nothing of the run was written") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            holder = {}
        os.close(fd)
        who = f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}" + (
            f", since {holder['since']}" if holder.get("since") else ""
        )
        raise RunDirInUse(
            f"{run_dir} is in use by {who} (lock {p}): one process writes a run directory at "
            "a time; wait for that run to end (or stop it), or choose another hydra.run.dir"
        ) from None
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _OWNED[key] = [fd, 1]


def unlock_run_dir(run_dir: Path) -> None:
    key = str(Path(run_dir).resolve())
    held = _OWNED.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _OWNED[key]
        os.close(held[0])  # closing the only descriptor releases the flock


@contextlib.contextmanager
def owned(run_dir: Path):
    """`with owned(run_dir):` the run writes it alone; stale temp files are removed first."""
    lock_run_dir(run_dir)
    try:
        RunDir(run_dir).clean_temps()
        yield
    finally:
        unlock_run_dir(run_dir)
