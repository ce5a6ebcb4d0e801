"""The Python API: run a stage, or load a run directory, and get what it decided as objects.

    import runner
    rec = runner.run("baseline", ["data=synthetic", "trainer.epochs=2"])
    rec.ok, rec.accuracy, rec.verdicts, rec.metrics[-1], rec.config.model
    model = rec.model()            # the final model, loaded, in eval mode
    rec                            # in Jupyter: verdicts, key figures and curves
    rec.report()                   # the full report.html, inline
    rec = runner.load("outputs/2026-12-07/10-00-00-123456")

Both go through the job layer (runner/jobs.py): `run` plans (compose, from=, validate: a bad
config raises runner.ConfigError with the problems the CLI prints, before anything runs),
runs in this process, and reads the run directory back. Nothing here imports torch until a
model is loaded.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from runner import jobs
from runner.errors import ConfigError, RunnerError

PathLike = Union[str, Path]


class Run:
    """A run directory read back (runner/jobs.py RunRecord), with the figures a person or a
    program wants from it."""

    def __init__(self, record: jobs.RunRecord, output: str = ""):
        self.record = record
        self.output = output  # what the run printed (runner.run(..., quiet=True) keeps it)

    # -- what it says
    @property
    def path(self) -> Path:
        return self.record.path

    @property
    def stage(self) -> Optional[str]:
        return self.record.stage

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def exit_code(self) -> Optional[int]:
        return self.record.exit_code

    @property
    def ok(self) -> bool:
        return self.record.ok

    @property
    def accuracy(self) -> Optional[float]:
        """The headline accuracy: the stage's own (best val-loss epoch for a training run)."""
        return self.record.accuracy

    @property
    def error(self) -> Optional[str]:
        return self.record.error

    @property
    def summary(self) -> Dict[str, Any]:
        return self.record.summary

    @property
    def verdicts(self) -> List[Dict[str, Any]]:
        """checks.json: one dict per check (name, status, value, expected, message, ...)."""
        return self.record.checks

    @property
    def failed_checks(self) -> List[str]:
        return self.record.failed_checks

    def verdict(self, name: str) -> Dict[str, Any]:
        for v in self.verdicts:
            if v.get("name") == name:
                return v
        raise KeyError(f"{name!r} is not a check of this run; its checks: {self._names()}")

    def _names(self) -> str:
        return ", ".join(str(v.get("name")) for v in self.verdicts) or "(none)"

    @property
    def metrics(self) -> List[Dict[str, Any]]:
        """metrics.csv's rows, numbers as floats (empty cells as None)."""
        from runner.output import read_metrics

        return read_metrics(self.path)  # a malformed file: ConfigError naming line and column

    @property
    def config(self):
        """The config the run used (config.yaml when from= changed it, else Hydra's record)."""
        from omegaconf import OmegaConf

        from runner.lineage import run_config

        p = run_config(self.path)
        if p is None:
            raise FileNotFoundError(f"{self.path}: no config.yaml or .hydra/config.yaml")
        return OmegaConf.load(p)

    @property
    def lineage(self) -> Optional[Dict[str, Any]]:
        return self.record.lineage

    @property
    def weights(self) -> Optional[Path]:
        """The final model's file: the stage's outcome (a run's best.pt, a ladder's best
        rung's, a study's best trial's, squeeze's adopted model, its ensemble.pt included, or
        a recipe's final model)."""
        from runner.lineage import outcome

        try:
            o = outcome(self.path)
        except ConfigError:
            return None
        return o.model or o.weights

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def model(self, device: str = "cpu", trust_run_configs: bool = False):
        """The final model, built as the run built it, its weights loaded, in eval mode (an
        ensemble: one module averaging its members' logits). The checkpoint's config is data:
        a `_target_` it names that the packaged configs do not is refused unless
        `trust_run_configs` (the run's own code, if you trust its folder)."""
        from runner.inference import load_final

        if self.weights is None:
            raise FileNotFoundError(f"{self.path}: this {self.stage} run has no model weights")
        return load_final(self.path, device, trust_run_configs).module

    def predict(self, inputs=(), **kw):
        """runner.predict on this run: image files/folders, or `split="val"` (its own data);
        the rows as a list of dicts (`.accuracy` on a split; `out=` also writes the CSV)."""
        from runner.prediction import predict

        return predict(self.path, inputs, **kw)

    def export(self, formats=("onnx",), out=None, **kw):
        """runner.export on this run: a folder with the model file(s), config.json and a card."""
        from runner.exporting import export

        return export(self.path, formats, out, **kw)

    # -- in a notebook
    def report(self, height: int = 800):
        """The full report.html inline (an IPython IFrame of the file's own content)."""
        from IPython.display import HTML

        page = self.report_path.read_text()
        return HTML(
            f'<iframe srcdoc="{html.escape(page, quote=True)}" '
            f'style="width:100%;height:{int(height)}px;border:1px solid #ccc"></iframe>'
        )

    def _repr_html_(self) -> str:
        esc = html.escape
        acc = self.accuracy
        head = (
            f"<b>{esc(str(self.stage))}</b> run <code>{esc(str(self.path))}</code>: "
            f"{esc(self.status)}, exit code {esc(str(self.exit_code))}"
            + (f", accuracy <b>{acc:.4f}</b>" if acc is not None else "")
        )
        if self.error:
            head += f"<br><b>error:</b> {esc(self.error)}"
        figures = "".join(
            f"<tr><td>{esc(k)}</td><td>{esc(_short(self.summary.get(k)))}</td></tr>"
            for k in ("val_acc", "val_loss", "best_val_acc", "epochs", "wall_s", "model")
            if self.summary.get(k) is not None
        )
        colour = {"pass": "#2e7d32", "warn": "#ef6c00", "fail": "#c62828", "skip": "#757575"}
        rows = "".join(
            f"<tr><td>{esc(str(v.get('name')))}</td>"
            f"<td style='color:{colour.get(str(v.get('status')), '#000')}'><b>"
            f"{esc(str(v.get('status', '')).upper())}</b></td>"
            f"<td>{esc(_short(v.get('value')))}</td><td>{esc(str(v.get('message', '')))}</td></tr>"
            for v in self.verdicts
        )
        parts = [f"<p>{head}</p>"]
        if figures:
            parts.append(f"<table>{figures}</table>")
        if rows:
            parts.append(
                "<table><tr><th>check</th><th>status</th><th>value</th><th>message</th></tr>"
                f"{rows}</table>"
            )
        curves = self.path / "plots" / "curves.png"
        if curves.is_file():
            data = base64.b64encode(curves.read_bytes()).decode()
            parts.append(f'<img src="data:image/png;base64,{data}" style="max-width:640px">')
        parts.append(f"<p>report: <code>{esc(str(self.report_path))}</code> (rec.report())</p>")
        return "\n".join(parts)

    def __repr__(self) -> str:
        acc = f" accuracy={self.accuracy:.4f}" if self.accuracy is not None else ""
        return f"<Run {self.stage} {self.status} exit={self.exit_code}{acc} {self.path}>"


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def default_run_dir(cwd: PathLike, sweep: bool = False) -> Path:
    """Where the CLI would put a run started now (conf/config.yaml hydra.run.dir)."""
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    return Path(cwd) / ("multirun" if sweep else "outputs") / stamp


def run(
    stage: Optional[str] = None,
    overrides: Sequence[str] = (),
    *,
    run_dir: Optional[PathLike] = None,
    config_dir: Optional[PathLike] = None,
    cwd: Optional[PathLike] = None,
    quiet: bool = False,
    how: str = "in-process",
    sweep: bool = False,
) -> Run:
    """Run stage `stage` with Hydra overrides, as `python -m runner stage=<stage> OVERRIDES`
    would, and read its run directory back.

    Raises runner.ConfigError (with `.problems`) for a bad config or input (the CLI's exit 2),
    before training where it can be known then. A run that finished with failed checks is
    returned (`.ok` is False, `.failed_checks` says which). `quiet`: keep what it prints in
    `.output` instead of printing it. `how="process"`: a child process. `sweep=True`: a
    Hydra multirun (`-m`, e.g. stage=tune's study); the sweep directory is read back."""
    stage, rest = jobs._split_stage(stage, list(overrides))
    p = jobs.plan(stage, rest, config_dir=config_dir, cwd=cwd, multirun=sweep)
    d = Path(run_dir) if run_dir is not None else default_run_dir(p.cwd, sweep)
    d = d if d.is_absolute() else Path(p.cwd) / d
    out = jobs.run(p, d, how=how, capture=quiet, echo=not quiet)
    if out.code == 2:
        rec = jobs.RunRecord.read(d) if d.is_dir() else None
        msg = (rec.error if rec else None) or out.error or "config error"
        raise ConfigError(msg.removeprefix("config error: "))
    if not d.is_dir():
        raise RunnerError(f"the run left no directory at {d} (exit {out.code}): {out.error}")
    return Run(jobs.RunRecord.read(d), out.output)


def lr_range(overrides: Sequence[str] = (), *, cwd: Optional[PathLike] = None):
    """The lr range test (train.lr_range) for the config `python -m runner OVERRIDES` composes,
    without a run directory: a Verdict whose `.details` hold "suggestion" (the steepest
    descent's lr), "rule", "valley", "lrs", "losses" and `.figures["curve"]` the plot.

        v = runner.api.lr_range(["data=digits", "model=tiny_cnn"])
        v.status, v.details["suggestion"]

    A bad config raises runner.ConfigError (the CLI's exit 2)."""
    from runner.lrfind import lr_range as run_lr_range

    return run_lr_range(list(overrides), cwd=str(cwd) if cwd is not None else None)


def load(run_dir: PathLike) -> Run:
    """A run directory (a run, a ladder, a study, a squeeze or a recipe) read back."""
    d = Path(run_dir).expanduser()
    if not d.is_dir():
        raise ConfigError(f"runner.load({str(run_dir)!r}): not a directory")
    if not any((d / f).exists() for f in ("summary.json", ".hydra", "study.json", "error.json")):
        raise ConfigError(
            f"runner.load({str(run_dir)!r}): no run there (expected summary.json, .hydra/ "
            "or study.json)"
        )
    return Run(jobs.RunRecord.read(d))
