"""Bad input around the stages: stage settings of the wrong type, init_from= resolving what
from= resolves, and no half-made run folder after a config error under from=."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST, compose
from omegaconf import OmegaConf

from runner.errors import ConfigError
from runner.stages.common import init_weights


def test_stage_params_are_typed_at_compose_time():
    """stage.params is the stage's Params dataclass: a wrong type or an unknown key fails
    while composing, with OmegaConf's full key; a number where a float goes is a float."""
    cfg = compose(["stage=overfit", "checks.overfit_train_fit.train_loss_target=1"])
    assert cfg.checks.overfit_train_fit.train_loss_target == 1.0
    assert isinstance(cfg.checks.overfit_train_fit.train_loss_target, float)
    with pytest.raises(Exception) as e:
        compose(["stage=overfit", "checks.overfit_train_fit.train_loss_target=abc"])
    assert "checks.overfit_train_fit.train_loss_target" in str(e.value.__cause__)
    with pytest.raises(Exception) as e:
        compose(["stage=regularize", "stage.params.min_delta=[1]"])
    with pytest.raises(Exception) as e:
        compose(["stage=squeeze", "stage.params.k=2.5"])
    assert "stage.params.k" in str(e.value.__cause__)
    with pytest.raises(Exception) as e:  # a stage without settings takes none
        compose(["stage=train", "stage.params.lr=1"])
    assert "NoParams" in str(e.value.__cause__)


def test_init_from_a_ladder_dir_loads_its_kept_rungs_weights(tmp_path):
    """init_from= takes what from= takes: a regularize run resolves to its best rung's weights."""
    from runner.checkpoint import make_checkpoint
    from runner.loop import LoopState

    torch.manual_seed(0)
    saved = torch.nn.Linear(4, 2)
    ladder = tmp_path / "reg"
    (ladder / "rungs" / "2-wd" / "checkpoints").mkdir(parents=True)
    (ladder / "regularized_config.yaml").write_text("stage:\n  name: regularize\n")
    (ladder / "summary.json").write_text(
        json.dumps(
            {
                "stage": "regularize",
                "best_rung_dir": "rungs/2-wd",
                "kept_overrides": ["optim.weight_decay=1e-4"],
            }
        )
    )
    opt = torch.optim.SGD(saved.parameters(), lr=0.1)
    ck = make_checkpoint(saved, opt, None, LoopState(), "{}", {"model": "linear"})
    torch.save(ck, ladder / "rungs" / "2-wd" / "checkpoints" / "best.pt")
    fresh = torch.nn.Linear(4, 2)
    got = init_weights(fresh, "reg", str(tmp_path))
    assert got == ladder / "rungs" / "2-wd" / "checkpoints" / "best.pt"
    assert torch.equal(fresh.weight, saved.weight)
    with pytest.raises(ConfigError, match="no checkpoints/best.pt or last.pt"):
        init_weights(fresh, ".", str(tmp_path))  # a folder that is no run of any kind
    # another architecture: refused when asked for, skipped when from= chose it
    with pytest.raises(ConfigError, match=r"saved: linear\): size mismatch for weight"):
        init_weights(torch.nn.Linear(4, 3), "reg", str(tmp_path))
    assert init_weights(torch.nn.Linear(4, 3), "reg", str(tmp_path), optional=True) is None


def test_config_error_under_from_leaves_no_run_folder(cli, tmp_path):
    """from= writes lineage.json and config.yaml before the stage reads its settings; a config
    error there still leaves nothing behind."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.yaml").write_text(OmegaConf.to_yaml(compose(FAST + ["stage=train"])))
    (src / "summary.json").write_text(json.dumps({"stage": "train", "val_acc": 0.5}))
    r = cli(FAST + ["stage=overfit", "from=src", "checks.overfit_train_fit.train_loss_target=abc"])
    assert r.code == 2, r.out
    assert (
        "checks.overfit_train_fit.train_loss_target" in r.out
        and "could not be converted to Float" in r.out
    )
    assert "Traceback" not in r.out
    assert not list((tmp_path / "outputs").glob("*/*"))
    # a missing init_from= is found before data and model are built
    r = cli(FAST + ["stage=train", "init_from=nope"])
    assert r.code == 2 and "init_from='nope': no such run directory" in r.out, r.out
    assert "data: synthetic" not in r.out
