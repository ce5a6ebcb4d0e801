"""`from=<run dir>` (runner/lineage.py), squeeze's seed reruns and "leave it training", and the
whole recipe with the tune stage inside it."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import FAST, assert_contract
from omegaconf import OmegaConf

from runner.checks.outcomes import mean_std as _mean_std
from runner.checks.outcomes import seed_spread as seed_verdict
from runner.lineage import common_stage, flatten, outcome

TINY = FAST + ["model.name=test_resnet"]


# ----------------------------------------------------------------------------- pure pieces
def test_flatten_and_common_stage():
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": {}}, "e": None}) == {
        "a.b": 1,
        "a.c": [1, 2],
        "a.d": {},
        "e": None,
    }
    assert common_stage(["train", "baseline", "overfit"], ["train", "tune"]) == "train"
    assert common_stage(["train", "baseline", "overfit"], ["train", "baseline"]) == "baseline"
    assert common_stage(["a"], ["b"]) is None


def test_seed_verdict_is_a_win_only_beyond_the_seed_spread():
    def group(accs):
        m, s = _mean_std(accs)
        return {"mean": m, "std": s, "val_acc": accs}

    # means 0.95 vs 0.90, stds 0.01: a lead of 0.05 > 0.01
    assert seed_verdict(group([0.94, 0.95, 0.96]), group([0.89, 0.90, 0.91]), 3).status == "pass"
    # means 0.93 vs 0.92, std of the winner 0.03: within the spread, not a win
    v = seed_verdict(group([0.90, 0.93, 0.96]), group([0.91, 0.92, 0.93]), 3)
    assert v.status == "warn" and "not a win" in v.message
    assert v.details["spread"] == pytest.approx(0.03) and v.details["lead"] == pytest.approx(0.01)
    # a NaN run leaves one value: no spread to judge by, so no win either
    assert seed_verdict(group([0.99, None]), group([0.5, 0.5]), 2).status == "warn"
    assert seed_verdict(group([0.9, 0.9]), None, 2).status == "skip"
    assert seed_verdict({}, None, 1).status == "skip"
    assert _mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)))


# the winner leads on both at its recorded seed, but over three seeds only its accuracy leads
# the runner-up's clearly; its macro-F1 is within seed noise of it: (val acc, macro-F1) per
# seed, the candidate's own first
SEEDS = {
    "winner": [(0.95, 0.66), (0.96, 0.70), (0.94, 0.50)],
    "runner-up": [(0.80, 0.62), (0.81, 0.58), (0.79, 0.66)],
}


@pytest.mark.parametrize("metric, status", [("accuracy", "pass"), ("macro_f1", "warn")])
def test_seed_reruns_compare_on_the_configured_metric(tmp_path, monkeypatch, metric, status):
    """squeeze ranks candidates on `metric`; its seed reruns must compare the winner and the
    runner-up on it too, not on accuracy: here the two disagree, and so does the verdict. Each
    seed's val_acc stays recorded; another metric adds its score (seeds.csv and the groups)."""
    import json
    from types import SimpleNamespace

    from runner import jobs
    from runner.stages import common, squeeze

    def summary(acc, f1):
        return {"stage": "train", "epochs": 2, "best_val_acc": acc, "best_val_macro_f1": f1}

    cands = []
    for label, figures in SEEDS.items():
        d = tmp_path / label
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(summary(*figures[0])))
        cands.append(d)
    cfg_of = {"seed": 0, "trainer": {"epochs": 2}, "stage": {"name": "train"}}
    monkeypatch.setattr(jobs, "trained_config", lambda d: OmegaConf.create(cfg_of))

    def sub_run(c, ctx, path, overrides, title, lineage, summary_extra):
        label = path.name.rsplit("-seed", 1)[0]
        return SimpleNamespace(nonfinite=False), summary(*SEEDS[label][int(c.seed)])

    monkeypatch.setattr(common, "sub_run", sub_run)
    # the two candidates stand for two recipes (their configs are stubbed alike here)
    monkeypatch.setattr(squeeze, "runner_up", lambda cs: cs[1])
    cfg = OmegaConf.create({"metric": metric, "checks": None})
    ctx = SimpleNamespace(run=SimpleNamespace(path=tmp_path / "sq"))
    groups, v, more = squeeze.seed_phase(cfg, cands, 3, ctx, {"sub_runs": []})

    win, up = groups["winner"], groups["runner_up"]
    assert win["val_acc"] == [a for a, _ in SEEDS["winner"]]
    assert v.status == status
    assert [r["val_acc"] for r in more["rows"]] == [a for g in SEEDS.values() for a, _ in g]
    if metric == "accuracy":  # as before: no metric named, the groups and rows of val_acc
        assert "metric" not in win and "metric" not in v.details and " on " not in v.message
        assert list(more["rows"][0]) == ["candidate", "seed", "val_acc", "dir"]
        assert win["mean"] == pytest.approx(0.95) and "mean val_acc" in more["stats"][0]
    else:
        assert win["metric"] == up["metric"] == v.details["metric"] == "macro_f1"
        assert "over 3 seeds on macro_f1" in v.message and "not a win" in v.message
        assert win["score"] == [f for _, f in SEEDS["winner"]]
        assert win["mean"] == pytest.approx(0.62) == up["mean"]
        assert list(more["rows"][0]) == ["candidate", "seed", "val_acc", "metric", "score", "dir"]
        assert [r["score"] for r in more["rows"]] == [f for g in SEEDS.values() for _, f in g]
        assert "mean macro_f1 score" in more["stats"][0]


# ----------------------------------------------------------------------------- from=
def test_from_starts_a_stage_from_a_runs_outcome_and_train_warm_starts(cli):
    src = cli(FAST + ["stage=baseline", "optim.lr=1e-3", "data.num_train=96", "seed=5"])
    assert src.code in (0, 1), src.out
    src_dir = src.run_dir
    # overfit from the baseline run: data, lr and seed come from it, the model and the epoch
    # budget from overfit.yaml, the model name from this command
    o = cli(
        [
            "stage=overfit",
            f"from={src_dir}",
            "model.name=test_resnet",
            "checks.overfit_train_fit.train_loss_target=0.5",
        ]
    )
    assert o.code in (0, 1), o.out
    o_dir = next(d for d in o.run_dirs if d != src_dir)
    lin = o.json("lineage.json", o_dir)
    assert lin["source"] == str(src_dir) and lin["source_stage"] == "baseline"
    assert lin["common_stage"] == "baseline"
    assert lin["from_source"]["optim.lr"] == pytest.approx(1e-3)
    assert lin["from_source"]["data.num_train"] == 96 and lin["from_source"]["seed"] == 5
    assert lin["from_stage"]["trainer.epochs"] == 30
    # the command's stage settings are listed too (they are never taken from the source)
    assert lin["from_command"] == {
        "model.name": "test_resnet",
        "checks.overfit_train_fit.train_loss_target": 0.5,
    }
    assert "checks.overfit_train_fit.train_loss_target" in (o_dir / "report.html").read_text()
    assert lin["weights"] is None  # overfit trains from scratch
    used = OmegaConf.load(o_dir / "config.yaml")
    assert used.data.kind == "synthetic" and used.data.num_train == 96 and used.seed == 5
    assert used.model.name == "test_resnet" and used.trainer.epochs == 30
    s = o.json("summary.json", o_dir)
    assert s["data"]["num_train"] == 96 and s["from"]["source"] == str(src_dir)
    assert "Started from" in (o_dir / "report.html").read_text()
    assert_contract(o_dir)

    # stage=train from the overfit run: the same model, so it starts from its best weights
    t = cli(["stage=train", f"from={o_dir}", "trainer.epochs=1"])
    assert t.code in (0, 1), t.out
    t_dir = max((d for d in t.run_dirs if d not in (src_dir, o_dir)))
    lin = t.json("lineage.json", t_dir)
    assert lin["weights"] == str(o_dir / "checkpoints" / "best.pt")
    assert "init_from: model weights from" in t.out
    warm = t.json("summary.json", t_dir)["train_loss"]
    # init_from=null: a fresh start from the same config; its first epoch is clearly worse
    f = cli(["stage=train", f"from={o_dir}", "trainer.epochs=1", "init_from=null"])
    f_dir = max((d for d in f.run_dirs if d not in (src_dir, o_dir, t_dir)))
    assert f.json("lineage.json", f_dir)["weights"] is None
    assert f.json("summary.json", f_dir)["train_loss"] > warm

    # a wrong source: exit 2, one message naming from=
    bad = cli(["stage=overfit", "from=no/such/run"])
    assert bad.code == 2 and "from=" in bad.out and "Traceback" not in bad.out


def test_init_from_loads_weights_and_refuses_another_architecture(cli, tmp_path):
    resnet = FAST + ["model=timm", "model.name=test_resnet"]
    a = cli(resnet + ["stage=train", "trainer.epochs=1"])
    assert a.code in (0, 1), a.out
    a_dir = a.run_dir
    ck = a_dir / "checkpoints" / "best.pt"
    saved = torch.load(ck, weights_only=True)["model"]
    ok = cli(resnet + ["stage=train", "trainer.epochs=1", f"init_from={ck}", "optim.lr=1e-12"])
    assert ok.code in (0, 1) and "init_from: model weights" in ok.out, ok.out
    new = max(ok.run_dirs)  # the newest: outputs/<date>/<time> sorts as a path (midnight too)
    got = torch.load(new / "checkpoints" / "last.pt", weights_only=True)["model"]
    k = next(k for k in saved if saved[k].is_floating_point())
    assert torch.allclose(saved[k], got[k], atol=1e-6)  # lr 1e-12: the loaded weights stay
    bad = cli(FAST + ["stage=train", "trainer.epochs=1", f"init_from={a_dir}"])  # TinyCNN
    assert bad.code == 2 and "does not fit this model" in bad.out, bad.out
    # the saved model is named (not '?') with its first concrete difference
    assert "(saved: test_resnet, 4 classes, 3 input channel(s)): " in bad.out, bad.out
    assert "Error(s) in loading state_dict" not in bad.out  # a concrete key instead
    # from= chose the warm start (not the user): another architecture trains from scratch, and
    # lineage.json and the log say why
    skip = cli(FAST + ["stage=train", "trainer.epochs=1", f"from={a_dir}", "model=tiny_cnn"])
    assert skip.code in (0, 1) and "no warm start" in skip.out, skip.out
    s_dir = max(skip.run_dirs)
    lin = skip.json("lineage.json", s_dir)
    assert lin["weights"] is None and "test_resnet" in lin["weights_skipped"]
    assert "init_from: model weights" not in skip.out


# ----------------------------------------------------------------------------- squeeze
def test_squeeze_reruns_winner_and_runner_up_over_seeds_and_leaves_the_winner_training(cli):
    rungs = "stage.params.rungs=[{name:wd,overrides:['optim.weight_decay=1e-4']}]"
    r = cli(TINY + ["stage=regularize", "trainer.epochs=2", "optim.lr=3e-3", rungs])
    assert r.code == 0, r.out
    ladder = r.run_dir
    q = cli(
        FAST
        + [
            "stage=squeeze",
            f"from={ladder}",
            "stage.params.seeds=2",
            "stage.params.continue_epochs=2",
        ]
    )
    assert q.code == 0, q.out
    sq = next(d for d in q.run_dirs if d != ladder)
    s = q.json("summary.json", sq)
    win, up = s["seeds"]["winner"], s["seeds"]["runner_up"]
    assert win["run"] == s["members"][0] and up["run"] == s["members"][1]
    assert win["seeds"] == [0, 1] and len(win["val_acc"]) == 2
    assert win["mean"] == pytest.approx(sum(win["val_acc"]) / 2)
    with open(sq / "seeds.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    for d in ("winner-seed1", "runner-up-seed1"):
        assert (sq / "seeds" / d / "summary.json").exists()
    checks = {c["name"]: c for c in q.json("checks.json", sq)}
    assert checks["squeeze.seed_spread"]["status"] in ("pass", "warn")
    # leave it training: the winner's 2 epochs continued to 4, history kept
    c = s["continued"]
    assert c["from_epoch"] == 2 and c["to_epoch"] == 4 and isinstance(c["val_loss_improved"], bool)
    with open(sq / "continued" / "metrics.csv") as f:
        assert [int(x["epoch"]) for x in csv.DictReader(f)] == [1, 2, 3, 4]
    assert (sq / "continued" / "plots" / "curves.png").exists()
    # adopted: the best on val of winner / continued / ensemble, and that is the stage's val_acc
    assert s["val_acc"] == max(o["val_acc"] for o in s["options"]) == s["adopted"]["val_acc"]
    assert [o["what"] for o in s["options"]][0] == "winner" and s["ensemble_acc"] is not None
    html = (sq / "report.html").read_text()
    assert "Leave it training" in html and "Seeds" in html and "Adopted" in html
    assert "../../report.html" in (sq / "seeds" / "winner-seed1" / "report.html").read_text()
    assert_contract(sq, sq / "continued")


# ----------------------------------------------------------------------------- recipe
def test_recipe_runs_tune_between_regularize_and_squeeze(cli):
    """Every training stage starts from the previous one's outcome; tune's trials from the ladder."""
    rungs = 'stage.params.rungs=[{name:wd,overrides:["optim.weight_decay=1e-4"]}]'
    r = cli(
        TINY
        + [
            "stage=recipe",
            "stage.params.stages=[baseline,overfit,regularize,tune,squeeze]",
            "optim.lr=3e-3",
            "checks.strict=false",
            'stage.params.per_stage.overfit=["checks.overfit_train_fit.train_loss_target=0.5"]',
            'stage.params.per_stage.tune=["hydra.sweeper.n_trials=2"]',
            f"stage.params.per_stage.regularize=['{rungs}']",
            'stage.params.per_stage.squeeze=["stage.params.seeds=0","stage.params.continue_epochs=0"]',
        ]
    )
    assert r.code == 0, r.out
    top = min(r.run_dirs, key=lambda d: len(d.parts))
    s = r.json("summary.json", top)
    assert [x["stage"] for x in s["stages"]] == [
        "baseline",
        "overfit",
        "regularize",
        "tune",
        "squeeze",
    ]
    # the final model is what squeeze adopted; from=<recipe dir> starts from it
    assert s["final"]["stage"] == "squeeze" and s["final"]["weights"]
    assert str(outcome(top).source) == s["final"]["run"]
    ovf, reg, tune = top / "2-overfit", top / "3-regularize", top / "4-tune"
    assert r.json("lineage.json", ovf)["source"] == str(top / "1-baseline")
    assert r.json("lineage.json", reg)["source"] == str(ovf)
    study = r.json("study.json", tune)
    assert study["trials"] == 2 and study["best"]["value"] == s["stages"][3]["val_acc"]
    trial = r.json("lineage.json", tune / "0")
    assert trial["source"] == str(reg) and trial["source_stage"] == "regularize"
    sq = r.json("summary.json", top / "5-squeeze")
    assert any("/4-tune/" in m for m in sq["members"]) or sq["candidates"] >= 3
    with open(top / "recipe.csv") as f:
        rows = list(csv.DictReader(f))
    # the stage's own change (TinyCNN -> a timm ResNet); the command's trainer.epochs=2 wins
    assert "model._target_=null" in rows[1]["change"] and "trainer.epochs" not in rows[1]["change"]
    assert "kept:" in rows[2]["change"] and "trial(s); best" in rows[3]["change"]
    assert "4-tune/report.html" in (top / "report.html").read_text()
