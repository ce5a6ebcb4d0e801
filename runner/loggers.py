"""Experiment loggers beside metrics.csv: TensorBoard and MLflow, chosen in YAML (conf/logger/).

`logger=csv` is the default and always on (runner/output.py writes metrics.csv); the
others mirror each evaluation into their own tool so runs can be compared there:

    python -m runner logger=tensorboard        # <run dir>/tensorboard; tensorboard --logdir outputs
    python -m runner logger=mlflow             # local store ./mlruns (any tracking URI)
    python -m runner 'logger=[tensorboard,mlflow]'

`build_loggers(cfg, run, original_cwd, data, model)` returns one `Loggers` object that the
training run calls with every epoch record (`log_epoch`) and closes at the end. Libraries
are imported only when their logger is on. Only DDP rank 0 logs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from runner.errors import ConfigError
from runner.output import read_json

log = logging.getLogger("runner")

# epoch figures mirrored into the loggers: (record field, logged name, only when evaluated)
SCALARS = [
    ("train_loss", "train/loss", False),
    ("train_acc", "train/acc", False),
    ("val_loss", "val/loss", True),
    ("val_acc", "val/acc", True),
    ("lr", "lr", False),
    ("images_per_s", "perf/images_per_s", False),
    ("epoch_s", "perf/epoch_s", False),
]

MLFLOW_RUN_FILE = "mlflow.json"


def _get(rec: Any, key: str, default=None):
    return rec.get(key, default) if isinstance(rec, dict) else getattr(rec, key, default)


def epoch_scalars(rec: Any) -> Dict[str, float]:
    """The finite figures of one epoch record (EpochRecord or metrics row), by logged name."""
    evaluated = bool(_get(rec, "evaluated", True))
    out = {}
    for field_, name, needs_eval in SCALARS:
        v = _get(rec, field_)
        if needs_eval and not evaluated:
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


def first_layer_weight(model) -> Optional[tuple]:
    """(name, tensor) of the first weight with a fan-in (conv or linear), in definition order."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            return name, p
    return None


def input_grid(data, n: int):
    """The first n training images as a [C, H, W] grid in [0, 1] (normalisation undone)."""
    import torch
    from torchvision.utils import make_grid

    n = min(n, len(data.train))
    x, _ = data.train.get(range(n))
    mean = torch.tensor(data.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(data.std, dtype=x.dtype).view(1, -1, 1, 1)
    x = (x * std + mean).clamp(0, 1)
    if x.shape[1] not in (1, 3):  # tensorboard shows grey or RGB: keep the first channel
        x = x[:, :1]
    return make_grid(x, nrow=min(8, n), padding=1, pad_value=1.0)


class TensorboardLogger:
    def __init__(self, log_dir: Path, model, data, histograms: bool, images: int):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        # a resumed run appends to its events; the step-0 records are there already (and the
        # model now holds trained weights, which must not be logged as the init)
        resumed = log_dir.is_dir() and any(log_dir.iterdir())
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.model = model
        self.histograms = histograms
        if resumed:
            return
        if images and data is not None and len(data.train):
            # "visualize just before the net" (recipe stage 1): what the model is fed
            self.writer.add_image("input/grid", input_grid(data, images), global_step=0)
        if histograms and model is not None:
            self._histogram(0)  # at init: the weights before any training

    def _histogram(self, epoch: int) -> None:
        found = first_layer_weight(self.model)
        if found is not None:
            name, w = found
            self.writer.add_histogram(
                f"weights/{name}", w.detach().float().cpu(), global_step=epoch
            )

    def log_epoch(self, rec: Any) -> None:
        epoch = int(_get(rec, "epoch"))
        for name, v in epoch_scalars(rec).items():
            self.writer.add_scalar(name, v, global_step=epoch)
        if self.histograms and self.model is not None:
            self._histogram(epoch)
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


def flat_params(d: Any, prefix: str = "") -> Dict[str, str]:
    """A nested config as flat dotted keys with string values (MLflow params)."""
    out: Dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flat_params(v, f"{prefix}{k}."))
        if not d and prefix:
            out[prefix[:-1]] = "{}"
    else:
        out[prefix[:-1]] = str(d)[:500]
    return out


class MlflowLogger:
    """One MLflow run per run directory (a resumed run continues the same MLflow run)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        run_name: str,
        tags: Dict[str, str],
        params: Dict[str, str],
        run_dir,
    ):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ConfigError(
                "logger=mlflow needs the mlflow package; install it with "
                "pip install 'recipe-runner[mlflow]' (or pip install mlflow)"
            ) from e
        for name in ("mlflow", "alembic"):  # their schema-migration chatter is not ours
            logging.getLogger(name).setLevel(logging.WARNING)
        self.run_dir = run_dir
        previous = read_json(Path(run_dir.path) / MLFLOW_RUN_FILE)
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            if previous and previous.get("tracking_uri") == tracking_uri:
                self.run_id = previous["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                log.info("mlflow: continuing run %s (%s)", self.run_id, tracking_uri)
                return
            exp = self.client.get_experiment_by_name(experiment_name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment_name)
            run = self.client.create_run(exp_id, run_name=run_name, tags=tags)
        except Exception as e:  # unreachable server, bad URI, locked store: say which key
            raise ConfigError(
                f"logger.mlflow.tracking_uri={tracking_uri!r}: MLflow could not "
                f"start a run ({type(e).__name__}: {str(e)[:300]})"
            ) from e
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        run_dir.write_json(
            MLFLOW_RUN_FILE,
            {"tracking_uri": tracking_uri, "run_id": self.run_id, "experiment_id": exp_id},
        )
        log.info("mlflow: run %s in experiment %r (%s)", self.run_id, experiment_name, tracking_uri)

    def log_epoch(self, rec: Any) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        epoch = int(_get(rec, "epoch"))
        metrics = [Metric(k, v, now, epoch) for k, v in epoch_scalars(rec).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class Loggers:
    """All loggers that are on, called as one."""

    def __init__(self, loggers: Optional[List[Any]] = None):
        self.loggers = list(loggers or [])

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def log_epoch(self, rec: Any) -> None:
        for lg in self.loggers:
            lg.log_epoch(rec)

    def close(self, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED (non-finite loss) or KILLED (interrupted)."""
        for lg in self.loggers:
            try:
                lg.close(status)
            except Exception as e:  # a logger's hiccup at the end must not lose the run's results
                log.warning("logger %s did not close cleanly: %s", type(lg).__name__, e)
        self.loggers = []


def default_tracking_uri(original_cwd: str) -> str:
    return "sqlite:///" + str((Path(original_cwd) / "mlruns" / "mlflow.db").resolve())


def build_loggers(cfg, run, original_cwd: str, data=None, model=None) -> Loggers:
    """The loggers `cfg.logger` switches on, for the run directory `run` (a RunDir)."""
    from runner.distributed import from_env

    lc = cfg.get("logger")
    if lc is None or not from_env().main:
        return Loggers()
    out: List[Any] = []
    run_path = Path(run.path)
    tb = lc.tensorboard
    if tb.enabled:
        if tb.log_dir:
            try:
                sub = run_path.resolve().relative_to(Path(original_cwd).resolve())
            except ValueError:
                sub = Path(run_path.name)
            log_dir = (Path(original_cwd) / Path(tb.log_dir).expanduser()) / sub
        else:
            log_dir = run_path / "tensorboard"
        out.append(TensorboardLogger(log_dir, model, data, tb.histograms, tb.images))
        log.info("tensorboard: %s", log_dir)
    ml = lc.mlflow
    if ml.enabled:
        from omegaconf import OmegaConf

        uri = ml.tracking_uri or default_tracking_uri(original_cwd)
        if ml.tracking_uri and "://" not in uri and not uri.startswith("file:"):
            uri = str((Path(original_cwd) / uri).resolve())  # a bare folder, relative to the cwd
        tags = {
            "stage": str(cfg.stage.name),
            "run_dir": str(run_path.resolve()),
            "model": str(cfg.model.get("_target_") or cfg.model.name),
            "data": str(cfg.data.kind),
            **{str(k): str(v) for k, v in ml.tags.items()},
        }
        params = flat_params(OmegaConf.to_container(cfg, resolve=True))
        run_name = ml.run_name or f"{cfg.stage.name}/{run_path.name}"
        out.append(
            MlflowLogger(uri, ml.experiment_name or str(cfg.name), run_name, tags, params, run)
        )
    return Loggers(out)
