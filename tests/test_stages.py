"""stage=overfit and stage=regularize: end to end on tiny data, stage inheritance, the
ladder's keep/revert decisions, and the pure pieces (decision rule, experiment YAML, filters)."""

from __future__ import annotations

import csv
import math
import shutil

import pytest
import torch
import yaml
from conftest import FAST, REPO, assert_contract, compose
from omegaconf import OmegaConf

from runner.checks.training import train_fit
from runner.checks.weights import neighbour_corr
from runner.config import overrides_yaml
from runner.errors import ConfigError
from runner.stages.overfit import gap_of
from runner.stages.regularize import decide, experiment_overrides

TINY = FAST + ["model.name=test_resnet"]


def _flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):  # an empty mapping adds no leaf
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def _diff(a, b) -> set:
    fa, fb = _flat(a), _flat(b)
    return {k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>")}


# ----------------------------------------------------------------------------- inheritance
def test_overfit_differs_from_baseline_exactly_where_its_yaml_says():
    base, ovf = compose(["stage=baseline"]), compose(["stage=overfit"])
    assert _diff(base, ovf) == {
        "stage.name",
        "model.name",
        "model._target_",
        "model.kwargs.width",
        "trainer.epochs",
    }
    assert ovf.model.name == "resnet10t" and ovf.model._target_ is None
    assert ovf.optim.name == "adam" and ovf.optim.lr == 3e-4 and ovf.optim.weight_decay == 0
    assert ovf.sched.name == "none" and ovf.aug.name == "none"


def test_regularize_differs_from_overfit_exactly_where_its_yaml_says():
    ovf, reg = compose(["stage=overfit"]), compose(["stage=regularize"])
    assert _diff(ovf, reg) == {
        "stage.name",
        "stage.params.min_delta",
        "stage.params.rungs",
        "trainer.epochs",
        "trainer.early_stopping_patience",
    }
    assert all(r.name and r.overrides for r in reg.stage.params.rungs)


# ----------------------------------------------------------------------------- pure pieces
def test_decision_rule_with_known_numbers():
    # p = 0.9 on 200 examples: sqrt(2 * 0.9 * 0.1 / 200) = 0.03
    assert decide(0.9, 0.935, 200, 0.005)["threshold"] == pytest.approx(0.03)
    assert decide(0.9, 0.935, 200, 0.005)["keep"] is True
    assert decide(0.9, 0.925, 200, 0.005)["keep"] is False
    assert decide(0.9, 0.925, 200, 0.005)["delta"] == pytest.approx(0.025)
    # at p = 1 the standard error is 0 and min_delta is the floor
    assert decide(1.0, 1.0, 200, 0.005)["threshold"] == 0.005
    assert decide(0.5, 0.51, 10_000, 0.02)["keep"] is False  # se 0.007 < min_delta 0.02
    assert decide(0.5, None, 100, 0.0)["keep"] is False
    assert decide(0.5, float("nan"), 100, 0.0)["keep"] is False


def test_train_fit_verdict_and_gap():
    assert train_fit(0.01, 1.0, 0.02, 0.999, 5, 30).status == "pass"
    assert train_fit(0.3, 0.999, 0.02, 0.999, 5, 30).status == "pass"  # accuracy target
    v = train_fit(0.5, 0.8, 0.02, 0.999, 30, 30)
    assert v.status == "fail" and "bigger model" in v.message and "trainer.epochs" in v.message
    assert "trainer.epochs" not in train_fit(0.5, 0.8, 0.02, 0.999, 10, 30).message
    assert train_fit(float("nan"), None, 0.02, 0.999, 1, 30).status == "fail"
    g = gap_of({"train_acc": 1.0, "val_acc": 0.9, "train_loss": 0.01, "val_loss": 0.31})
    assert g["gap_acc"] == pytest.approx(0.1) and g["gap_loss"] == pytest.approx(0.3)


def test_experiment_yaml_composes_to_the_kept_changes(tmp_path):
    text = overrides_yaml(
        ["aug=light", "optim.lr=3e-3", "model.drop_rate=0.2", "trainer.epochs=7"],
        groups={"aug", "optim", "model"},
        header=["test"],
    )
    assert text.startswith("# @package _global_\n")
    doc = yaml.safe_load(text)
    assert doc["defaults"] == [{"override /aug": "light"}]
    assert doc["optim"]["lr"] == pytest.approx(3e-3) and doc["model"]["drop_rate"] == 0.2
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "experiment" / "regularized.yaml").write_text(text)
    cfg = compose(["experiment=regularized"], config_dir=str(conf))
    assert cfg.aug.name == "light" and cfg.optim.lr == pytest.approx(3e-3)
    assert cfg.model.drop_rate == 0.2 and cfg.trainer.epochs == 7
    assert experiment_overrides(
        [
            "stage=regularize",
            "stage.params.min_delta=0.1",
            "optim.lr=1",
            "hydra.run.dir=x",
            "data=synthetic",
        ]
    ) == ["optim.lr=1", "data=synthetic"]


def test_neighbour_corr_smooth_vs_noise():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(32, 3, 7, 7, generator=g)
    yy, xx = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    blobs = torch.stack([torch.exp(-((xx - c) ** 2 + (yy - 3) ** 2) / 6.0) for c in range(1, 7)])
    smooth = blobs[:, None].repeat(1, 3, 1, 1)
    assert neighbour_corr(smooth) > 0.5
    assert abs(neighbour_corr(noise)) < 0.15
    from runner.checks.weights import first_layer_verdict

    def net(w):
        conv = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1])
        conv.weight.data.copy_(w)
        return torch.nn.Sequential(conv)

    assert first_layer_verdict(net(smooth), 0.1).status == "pass"
    v = first_layer_verdict(net(noise), 0.1)
    assert v.status == "warn" and "noise" in v.message and "filters" in v.figures
    assert first_layer_verdict(net(noise[:, :, :3, :3]), 0.1).status == "skip"


def test_ensemble_scores_from_known_member_logits():
    from runner.stages.squeeze import ensemble_scores

    targets = torch.tensor([0, 1, 1, 1])
    a = torch.tensor([[2.0, 0], [0, 1], [1, 0], [0, 3]])  # right on 0, 1, 3: 0.75
    b = torch.tensor([[0.0, 1], [0, 2], [0, 2], [1, 0]])  # right on 1, 2: 0.5
    sc = ensemble_scores([a, b], targets)  # mean [[1,.5],[0,1.5],[.5,1],[.5,1.5]]: all right
    assert sc["member_acc"] == [0.75, 0.5] and sc["ensemble_acc"] == 1.0
    mean = (a + b) / 2
    assert sc["ensemble_loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(mean, targets))
    )


def test_squeeze_candidates_need_finished_runs(tmp_path):
    from runner.stages.squeeze import candidates

    with pytest.raises(ConfigError, match="no finished run"):
        candidates([tmp_path])
    with pytest.raises(ConfigError, match="not a directory"):
        candidates([tmp_path / "missing"])


# ----------------------------------------------------------------------------- end to end
def test_a_pretrained_rung_keeps_the_base_image_size(cli, tmp_path):
    # model.pretrained=true makes data.image_size default to the weights' own (test_resnet:
    # 160 px); a rung is one change, so it trains at the base's 16 px digits all the same
    import timm

    w = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet", num_classes=10, in_chans=1).state_dict(), w)
    rungs = "stage.params.rungs=[{name:pre,overrides:['model.pretrained=true']}]"
    r = cli(
        [
            *FAST,
            "data=digits",
            "model=timm",
            "model.name=test_resnet",
            f"model.pretrained_file={w}",
            "stage=regularize",
            "trainer.epochs=1",
            rungs,
        ]
    )
    assert r.code == 0, r.out
    rung = OmegaConf.load(r.run_dir / "rungs" / "1-pre" / "config.yaml")
    assert rung.model.pretrained is True
    assert rung.data.image_size == 16
    assert r.json("summary.json")["kept_overrides"] in ([], ["model.pretrained=true"])


def test_a_weights_file_without_pretrained_is_read_only_by_a_ladder_that_tries_it(tmp_path):
    # the recipe hands the file on: regularize's pretrained rung reads it, a stage that trains
    # from scratch does not (left out for it); alone, a stage that ignores it is an error
    from runner.config import unread_keys, validate

    w = tmp_path / "w.pth"
    w.write_bytes(b"")
    args = ["model=timm", "model.name=test_resnet", f"model.pretrained_file={w}"]
    regularize = compose(["stage=regularize", *args])
    validate(regularize)
    assert unread_keys(regularize, ["model.pretrained_file"]) == []
    train = compose(["stage=train", *args])
    assert unread_keys(train, ["model.pretrained_file"]) == ["model.pretrained_file"]
    with pytest.raises(ConfigError, match="set model.pretrained=true"):
        validate(train)
    no_rung = compose(["stage=regularize", *args, "stage.params.rungs=[]"])
    assert unread_keys(no_rung, ["model.pretrained_file"]) == ["model.pretrained_file"]
    validate(compose(["stage=recipe", *args]))  # each of its stages judges for itself


def test_regularize_ladder_keeps_the_rung_that_helps_and_reverts_the_one_that_hurts(cli):
    rungs = (
        "stage.params.rungs=[{name:up,overrides:['optim.lr=3e-3']},"
        "{name:down,overrides:['optim.lr=1e-7']},"
        "{name:pre,overrides:['model.pretrained=true'],when:model.pretrained_file}]"
    )
    r = cli(TINY + ["stage=regularize", "trainer.epochs=3", "optim.lr=1e-6", rungs])
    assert r.code == 0, r.out
    with open(r.run_dir / "ladder.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(x["name"], x["kept"]) for x in rows] == [
        ("base", "True"),
        ("up", "True"),
        ("down", "False"),
        ("pre", "False"),
    ]
    assert float(rows[1]["delta"]) > float(rows[1]["threshold"]) > 0
    assert float(rows[2]["delta"]) < 0
    # `when:` a key that is not set: the rung is listed as skipped, nothing trained, no dir
    assert rows[3]["error"] == "skipped: model.pretrained_file is not set" and not rows[3]["dir"]
    assert not (r.run_dir / "rungs" / "3-pre").exists()
    s = r.json("summary.json")
    assert s["kept_overrides"] == ["optim.lr=3e-3"] and s["ladder_val_acc"] > s["base_val_acc"]
    doc = yaml.safe_load((r.run_dir / "regularized.yaml").read_text())
    assert doc["optim"]["lr"] == pytest.approx(3e-3)  # the kept value beats the command's 1e-6
    assert doc["model"]["name"] == "test_resnet" and "stage" not in doc
    assert OmegaConf.load(r.run_dir / "regularized_config.yaml").optim.lr == pytest.approx(3e-3)
    checks = {c["name"]: c for c in r.json("checks.json")}
    fl = checks["regularize.first_layer"]
    assert fl["status"] in ("pass", "warn", "skip") and (r.run_dir / fl["artifacts"][0]).exists()
    for d in ("0-base", "1-up", "2-down"):
        assert (r.run_dir / "rungs" / d / "summary.json").exists()
    assert OmegaConf.load(r.run_dir / "rungs" / "1-up" / "config.yaml").optim.lr == pytest.approx(
        3e-3
    )
    html = (r.run_dir / "report.html").read_text()
    ladder_html = html[html.index("Ladder") :]
    assert (
        "<th>error</th>" in ladder_html
        and "skipped: model.pretrained_file is not set" in ladder_html
    )
    for d in ("0-base", "1-up", "2-down"):  # the dir column links each rung's own report
        assert f'<a href="rungs/{d}/report.html">' in ladder_html
    assert "rungs/3-pre" not in ladder_html  # no link to a folder that does not exist
    assert_contract(r.run_dir, r.run_dir / "rungs" / "1-up")

    ladder = r.run_dir
    # a rung with a misspelt key is a config error naming it, before anything trains
    bad = cli(TINY + ["stage=regularize", "stage.params.rungs=[{name:x,overides:['optim.lr=1']}]"])
    assert bad.code == 2 and "overides" in bad.out and "Traceback" not in bad.out, bad.out

    # stage=squeeze on that ladder: the best 2 rungs, reloaded from their checkpoints
    q = cli(
        FAST
        + [
            "stage=squeeze",
            f"stage.params.from={ladder}",
            "stage.params.k=2",
            "stage.params.seeds=0",
            "stage.params.continue_epochs=0",
        ]
    )  # test_lineage.py
    assert q.code == 0, q.out
    sq_dir = next(d for d in q.run_dirs if d != ladder and (d / "ensemble.csv").exists())
    s = q.json("summary.json", sq_dir)
    assert s["stage"] == "squeeze" and len(s["members"]) == 2
    assert s["members"][0].endswith("1-up")  # the best recorded val accuracy first
    assert s["member_val_acc"][0] == pytest.approx(float(rows[1]["val_acc"]))
    assert s["val_acc"] >= 0.0 and "Ensemble" in (sq_dir / "report.html").read_text()
    assert_contract(sq_dir)


def test_regularize_checks_every_rung_before_anything_trains(cli):
    """A typo in any rung (even the last, even one skipped by `when:`) is exit 2 before rung 0
    trains: every bad rung named with its override, in our words (no Hydra `+key` advice)."""
    rungs = (
        "stage.params.rungs=[{name:up,overrides:['optim.lr=3e-3']},"
        "{name:typo,overrides:['optim.weight_decay=1e-4','optim.nope=1']},"
        "{name:grp,overrides:['aug=ligth']},"
        "{name:pre,overrides:['model.pretrained=true','model.nope=1'],when:model.pretrained_file}]"
    )
    r = cli(TINY + ["stage=regularize", rungs])
    assert r.code == 2, r.out
    assert "stage.params.rungs[1] (typo): optim.nope=1: optim.nope is not in the config" in r.out
    assert "did you mean 'optim.name'" in r.out
    assert "stage.params.rungs[2] (grp): aug=ligth:" in r.out and "'light'" in r.out
    assert "stage.params.rungs[3] (pre): model.nope=1:" in r.out
    assert "rungs[0]" not in r.out and "optim.weight_decay=1e-4:" not in r.out
    assert "+optim" not in r.out and "+model" not in r.out and "Traceback" not in r.out, r.out
    assert not any((d / "rungs").exists() for d in r.run_dirs)
    assert not list(r.cwd.glob("outputs/**/rungs"))


def test_recipe_overfit_then_squeeze_and_stops_at_a_failing_gate(cli):
    """Also stage=overfit end to end (the recipe's first stage) and squeeze from a single run."""
    ok = cli(
        TINY
        + [
            "stage=recipe",
            "stage.params.stages=[overfit,squeeze]",
            "trainer.epochs=20",
            "optim.lr=3e-3",
            'stage.params.per_stage.overfit=["checks.overfit_train_fit.train_loss_target=0.05"]',
            'stage.params.per_stage.squeeze=["stage.params.seeds=0"]',
        ]
    )
    assert ok.code == 0, ok.out
    top = min(ok.run_dirs, key=lambda d: len(d.parts))
    s = ok.json("summary.json", top)
    assert [x["stage"] for x in s["stages"]] == ["overfit", "squeeze"] and not s["stopped"]
    assert s["val_acc"] == s["stages"][-1]["val_acc"] is not None
    assert (top / "1-overfit" / "report.html").exists() and (
        top / "2-squeeze" / "ensemble.csv"
    ).exists()
    assert "1-overfit/report.html" in (top / "report.html").read_text()
    assert_contract(top, top / "1-overfit", top / "2-squeeze")
    # the time per stage (issue 18 item 4): process wall time >= the stage's own, squeeze's
    # continuation as a sub-run; the report's figure shows accuracy and time per stage
    with open(top / "recipe.csv") as f:
        rows = list(csv.DictReader(f))
    for row, st in zip(rows, s["stages"]):
        assert float(row["wall_s"]) == st["wall_s"] > 0
    assert s["stages"][0]["wall_s"] >= s["stages"][0]["stage_wall_s"] > 0  # + process start
    sq = s["stages"][1]
    assert sq["sub_runs"] == 1 and [x["dir"] for x in sq["sub_runs_list"]] == ["continued"]
    assert 0 < sq["sub_runs_wall_s"] <= sq["wall_s"] and s["stages"][0]["sub_runs"] == 0
    assert s["wall_s"] >= sum(st["wall_s"] for st in s["stages"])
    assert (top / "plots" / "recipe_stages.png").exists()
    assert "plots/recipe_stages.png" in (top / "report.html").read_text()
    # stage=overfit: trained until the training-loss target, with the train/val gap
    o = ok.json("summary.json", top / "1-overfit")
    assert o["stage"] == "overfit" and o["train_loss"] <= 0.05 and o["epochs"] < 20
    assert "target" in o["stop_reason"]
    assert o["train_val_gap_acc"] == pytest.approx(o["train_acc"] - o["val_acc"])
    assert math.isfinite(o["train_val_gap_loss"])
    checks = {c["name"]: c for c in ok.json("checks.json", top / "1-overfit")}
    assert checks["overfit.train_fit"]["status"] == "pass"
    assert "Train/val gap" in (top / "1-overfit" / "report.html").read_text()

    # overfit cannot reach its target in 1 epoch at lr 1e-7: overfit.train_fit fails, recipe stops
    bad = cli(
        TINY
        + [
            "stage=recipe",
            "stage.params.stages=[overfit,squeeze]",
            "trainer.epochs=1",
            "optim.lr=1e-7",
        ]
    )
    assert bad.code == 1, bad.out
    top = max(
        (d for d in bad.run_dirs if (d / "recipe.csv").exists()), key=lambda d: d.stat().st_mtime
    )
    s = bad.json("summary.json", top)
    assert [x["stage"] for x in s["stages"]] == ["overfit"]
    assert s["stages"][0]["checks_failed"] == ["overfit.train_fit"]
    assert "overfit" in s["stopped"] and not (top / "2-squeeze").exists()
