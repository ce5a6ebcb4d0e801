"""logger=tensorboard / logger=mlflow, read back with the real libraries."""

from __future__ import annotations

import json
import math

import pytest
from conftest import FAST, compose

from runner.loggers import (
    MlflowLogger,
    TensorboardLogger,
    epoch_scalars,
    first_layer_weight,
    flat_params,
)


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    ea.Reload()
    return ea


def test_tensorboard_and_mlflow_together_log_what_metrics_csv_has(cli):
    from mlflow.tracking import MlflowClient

    r = cli([*FAST, "stage=train", "logger=[tensorboard,mlflow]", "name=logtest"])
    assert r.code == 0, r.out
    metrics = [row for row in (r.run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert len(metrics) == 2
    csv_val_acc = [float(line.split(",")[5]) for line in metrics]

    # tensorboard: scalars per epoch equal metrics.csv, the input grid, first-layer histograms
    ea = _events(r.run_dir / "tensorboard")
    tags = ea.Tags()
    assert {"train/loss", "val/loss", "val/acc", "lr"} <= set(tags["scalars"])
    got = [(e.step, e.value) for e in ea.Scalars("val/acc")]
    assert [s for s, _ in got] == [1, 2]
    assert [v for _, v in got] == pytest.approx(csv_val_acc, abs=1e-5)
    assert tags["images"] == ["input/grid"]
    grid = ea.Images("input/grid")[0]
    assert grid.width > 32 and grid.height > 32  # several 32 px synthetic images, tiled
    (hist_tag,) = tags["histograms"]
    assert hist_tag.startswith("weights/") and hist_tag.endswith("weight")
    assert [e.step for e in ea.Histograms(hist_tag)] == [0, 1, 2]  # init + each epoch
    assert ea.Histograms(hist_tag)[0].histogram_value.num > 0

    # mlflow: the local default store under the working directory, one run, params and metrics
    ref = json.loads((r.run_dir / "mlflow.json").read_text())
    assert ref["tracking_uri"] == "sqlite:///" + str((r.cwd / "mlruns" / "mlflow.db").resolve())
    client = MlflowClient(tracking_uri=ref["tracking_uri"])
    run = client.get_run(ref["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "logtest"
    assert run.data.params["trainer.epochs"] == "2" and run.data.params["data.kind"] == "synthetic"
    assert run.data.tags["stage"] == "train"
    assert run.data.tags["run_dir"] == str(r.run_dir.resolve())
    hist = client.get_metric_history(ref["run_id"], "val/acc")
    assert sorted((m.step, m.value) for m in hist) == [
        (1, pytest.approx(csv_val_acc[0], abs=1e-5)),
        (2, pytest.approx(csv_val_acc[1], abs=1e-5)),
    ]


def test_default_logger_is_csv_only_and_options_combine():
    cfg = compose([])
    lg = cfg.logger
    assert lg.csv.enabled and not lg.tensorboard.enabled and not lg.mlflow.enabled
    cfg = compose(["logger=tensorboard"])
    lg = cfg.logger
    assert lg.tensorboard.enabled and not lg.mlflow.enabled and lg.csv.enabled
    cfg = compose(["logger=many"])
    assert cfg.logger.tensorboard.enabled and cfg.logger.mlflow.enabled


def test_unknown_logger_key_is_a_config_error(cli):
    r = cli([*FAST, "logger.tensorboard.histogram=false"])
    assert r.code == 2, r.out
    assert "histogram" in r.out


def test_mlflow_resumed_run_continues_the_same_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from runner.output import RunDir

    uri = "sqlite:///" + str(tmp_path / "store.db")
    run_dir = RunDir(tmp_path / "run")
    first = MlflowLogger(uri, "exp", "train/run", {"stage": "train"}, {"seed": "0"}, run_dir)
    first.log_epoch({"epoch": 1, "train_loss": 2.0, "val_loss": 1.9, "val_acc": 0.3, "lr": 1e-3})
    first.close("KILLED")
    again = MlflowLogger(uri, "exp", "train/run", {"stage": "train"}, {"seed": "0"}, run_dir)
    assert again.run_id == first.run_id
    again.log_epoch({"epoch": 2, "train_loss": 1.0, "val_loss": 1.1, "val_acc": 0.6, "lr": 1e-3})
    again.close()
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "train/loss")) == [1, 2]
    assert len(client.search_runs([client.get_experiment_by_name("exp").experiment_id])) == 1


def test_mlflow_bad_tracking_uri_names_the_key(tmp_path):
    from runner.errors import ConfigError
    from runner.output import RunDir

    with pytest.raises(ConfigError, match="logger.mlflow.tracking_uri='nosuchscheme://x'"):
        MlflowLogger("nosuchscheme://x", "exp", "r", {}, {}, RunDir(tmp_path / "run"))


def test_epoch_scalars_skip_non_finite_and_unevaluated_figures():
    rec = {
        "epoch": 3,
        "train_loss": 0.5,
        "train_acc": 0.9,
        "val_loss": math.nan,
        "val_acc": 0.8,
        "lr": 1e-3,
        "evaluated": False,
    }
    out = epoch_scalars(rec)
    assert out == {"train/loss": 0.5, "train/acc": 0.9, "lr": 1e-3}  # no stale val figures
    rec.update(evaluated=True, val_loss=0.7)
    assert epoch_scalars(rec)["val/loss"] == 0.7 and epoch_scalars(rec)["val/acc"] == 0.8


def test_first_layer_weight_and_flat_params():
    import torch

    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    name, w = first_layer_weight(net)
    assert name == "1.weight" and tuple(w.shape) == (4, 3, 3, 3)  # BatchNorm's 1-d weight skipped
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "None",
        "e": "{}",
    }


def test_tensorboard_resumed_run_appends_without_a_second_init(tmp_path):
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    log_dir = tmp_path / "tb"
    tb = TensorboardLogger(log_dir, net, None, histograms=True, images=0)
    tb.log_epoch({"epoch": 1, "train_loss": 2.0, "lr": 0.1})
    tb.close()
    with torch.no_grad():
        net[0].weight.add_(5.0)  # "trained" weights, as restored from a checkpoint
    tb = TensorboardLogger(log_dir, net, None, histograms=True, images=0)
    tb.log_epoch({"epoch": 2, "train_loss": 1.0, "lr": 0.1})
    tb.close()
    ea = _events(log_dir)
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2]
    hist = ea.Histograms("weights/0.weight")
    assert [h.step for h in hist] == [0, 1, 2]  # one init, not a second one at the resume
    assert hist[0].histogram_value.max < 2.0 < hist[2].histogram_value.min
