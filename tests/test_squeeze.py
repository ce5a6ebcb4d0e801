"""stage=squeeze: what it adopts on a tie (`choose`), and where everything came from: the
squeeze run's lineage.json, and its sub-runs (seed reruns, the continued run) labelled as
squeeze's, each with a lineage.json naming the candidate it reruns or continues."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import FAST, assert_contract
from omegaconf import OmegaConf

from runner.errors import ConfigError
from runner.stages.squeeze import choose

TINY = FAST + ["model.name=test_resnet"]


# ----------------------------------------------------------------------------- tie-break
def test_choose_breaks_an_accuracy_tie_on_val_loss_then_prefers_the_simpler():
    win = {"what": "winner", "val_acc": 0.90, "val_loss": 0.40}
    cont = {"what": "continued", "val_acc": 0.90, "val_loss": 0.35}
    ens = {"what": "ensemble", "val_acc": 0.90, "val_loss": 0.38}
    # accuracy tied: the lowest val loss wins, wherever it is in the list
    assert choose([win, cont, ens]) is cont
    assert choose([win, dict(cont, val_loss=0.45), ens]) is ens
    # a higher accuracy beats any loss
    assert choose([win, cont, dict(ens, val_acc=0.91, val_loss=9.0)])["what"] == "ensemble"
    # accuracy and loss both tied: the simpler (earlier) option
    assert choose([win, dict(cont, val_loss=0.40), dict(ens, val_loss=0.40)]) is win
    assert choose([dict(cont, val_loss=0.40), dict(ens, val_loss=0.40)])["what"] == "continued"
    # a missing or NaN loss loses a tie; a NaN accuracy ranks last
    assert choose([dict(win, val_loss=None), cont])["what"] == "continued"
    assert choose([dict(win, val_loss=math.nan), dict(cont, val_loss=0.9)])["what"] == "continued"
    assert choose([dict(win, val_acc=math.nan), dict(ens, val_acc=0.1)])["what"] == "ensemble"
    assert choose([win]) is win
    with pytest.raises(ValueError):
        choose([])


# ----------------------------------------------------------------------------- end to end
def test_squeeze_records_lineage_and_labels_its_sub_runs(cli, tmp_path):
    # two tiny candidates in one process (a two-job sweep of stage=train, the cheapest stage):
    # runs/0 and runs/1: two learning rates (two seeds of one config would be one recipe:
    # no runner-up, test_the_runner_up_is_another_recipe_than_the_winner)
    r = cli(
        ["-m", *TINY, "model=timm", "stage=train", "hydra.sweep.dir=runs", "optim.lr=3e-4,1e-3"]
    )
    assert r.code == 0, r.out
    a, b = tmp_path / "runs" / "0", tmp_path / "runs" / "1"
    q = cli(
        FAST
        + [
            "stage=squeeze",
            "hydra.run.dir=sq",
            "stage.params.runs=[runs/0,runs/1]",
            "stage.params.k=2",
            "stage.params.seeds=2",
            "stage.params.continue_epochs=1",
        ]
    )
    assert q.code == 0, q.out
    sq = tmp_path / "sq"
    s = q.json("summary.json", sq)
    recorded = {str(d): q.json("summary.json", d)["best_val_acc"] for d in (a, b)}

    # the squeeze run's lineage.json: sources, candidates, winner/runner-up, sub-runs, adoption
    lin = q.json("lineage.json", sq)
    assert lin["stage"] == "squeeze" and lin["sources"] == {"from": None, "runs": [str(a), str(b)]}
    assert {c["dir"] for c in lin["candidates"]} == {str(a), str(b)}
    for c in lin["candidates"]:
        assert c["recorded_val_acc"] == pytest.approx(recorded[c["dir"]])
        assert c["member"] is True and c["skipped"] is False and c["used"] == "ensemble member"
        assert c["stage"] == "train"
    assert [c["rank"] for c in lin["candidates"]] == [1, 2]
    win, up = s["members"]  # ranked by recorded val acc, best first
    assert lin["winner"]["dir"] == win == lin["candidates"][0]["dir"]
    assert lin["runner_up"]["dir"] == up
    seed_w = s["seeds"]["winner"]["seeds"][1]
    seed_u = s["seeds"]["runner_up"]["seeds"][1]
    w_dir, u_dir = sq / "seeds" / f"winner-seed{seed_w}", sq / "seeds" / f"runner-up-seed{seed_u}"
    assert [(x["dir"], x["role"], x["candidate"]) for x in lin["sub_runs"]] == [
        (str(w_dir), "seed rerun", win),
        (str(u_dir), "seed rerun", up),
        (str(sq / "continued"), "continued", win),
    ]
    assert lin["options"] == s["options"] and lin["adopted"] == s["adopted"] == choose(s["options"])
    html = (sq / "report.html").read_text()
    assert "Started from" in html
    # the title says what was adopted, not "ensemble of 2" whatever was adopted
    title = html.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title.startswith("squeeze: adopted ") and title.endswith(" on synthetic"), title
    assert ("ensemble of 2" in title) == (s["adopted"]["what"] == "ensemble"), title

    # sub-runs: squeeze's (summary, title, log), trained on the candidate's config, with lineage
    subs = {
        w_dir: ("seed rerun", win),
        u_dir: ("seed rerun", up),
        sq / "continued": ("continued", win),
    }
    for d, (role, cand) in subs.items():
        ss = q.json("summary.json", d)
        assert (ss["stage"], ss["role"], ss["candidate"]) == ("squeeze", role, cand), d
        assert ss["candidate_stage"] == "train" and ss["from"]["source"] == cand
        assert ss["model"] == q.json("summary.json", Path(cand))["model"]
        sl = q.json("lineage.json", d)
        assert (sl["source"], sl["stage"], sl["role"], sl["source_stage"]) == (
            cand,
            "squeeze",
            role,
            "train",
        )
        assert sl["squeeze_run"] == str(sq)
        html = (d / "report.html").read_text()
        title = html.split("<title>", 1)[1].split("</title>", 1)[0]
        assert title.startswith("squeeze: ")
        assert "Started from" in html and str(cand) in html
        # the training config is the candidate's own: its stage, not squeeze's
        ck = torch.load(d / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        assert OmegaConf.create(ck["config"]).stage.name == "train"
    for d, sd in ((w_dir, seed_w), (u_dir, seed_u)):
        sl = q.json("lineage.json", d)
        assert sl["changed"] == {"seed": sd} and sl["weights"] is None
        assert q.json("summary.json", d)["seed"] == sd
    cl = q.json("lineage.json", sq / "continued")
    last = str(Path(win) / "checkpoints" / "last.pt")
    assert cl["changed"] == {"resume": last, "trainer.epochs": 3} and cl["weights"] == last
    assert q.json("summary.json", sq / "continued")["resumed_from"] == last
    log = [ln for ln in (sq / "runner.log").read_text().splitlines() if ": val_acc " in ln]
    for d in subs:  # the outcome line of each sub-run says squeeze, not the candidate's stage
        assert [ln.split("]")[-1].split(":")[0].strip() for ln in log if ln.endswith(str(d))] == [
            "squeeze"
        ]
    assert_contract(sq, w_dir, u_dir, sq / "continued")
    # the continued run's "Started from" reads as squeeze's continuation of the candidate
    chtml = (sq / "continued" / "report.html").read_text()
    assert "squeeze&#x27;s winning candidate" in chtml or "squeeze's winning candidate" in chtml
    assert "which this squeeze sub-run continues from its last.pt" in chtml
    assert cl["config_file"] == last

    # one candidate (stage.params.runs as a single string): no ensemble to judge or adopt
    one = cli(
        FAST
        + [
            "stage=squeeze",
            "hydra.run.dir=sq1",
            "stage.params.runs=runs/1",
            "stage.params.seeds=0",
            "stage.params.continue_epochs=0",
        ]
    )
    assert one.code == 0, one.out
    assert "1 candidate run(s); no ensemble (one candidate)" in one.out, one.out
    s1 = one.json("summary.json", tmp_path / "sq1")
    assert [o["what"] for o in s1["options"]] == ["winner"] and s1["adopted"]["run"] == str(b)
    checks = {c["name"]: c for c in one.json("checks.json", tmp_path / "sq1")}
    assert checks["squeeze.ensemble"]["status"] == "skip"
    assert "one candidate: no ensemble" in checks["squeeze.ensemble"]["message"]
    html = (tmp_path / "sq1" / "report.html").read_text()
    assert "<title>squeeze: adopted the winner (val acc " in html
    # from=<squeeze dir>: the adopted run's config and best weights (not squeeze's own config)
    t = cli(FAST + ["stage=train", "hydra.run.dir=t1", "from=sq1", "trainer.epochs=1"])
    assert t.code in (0, 1), t.out
    tl = t.json("lineage.json", tmp_path / "t1")
    assert tl["weights"] == str(b / "checkpoints" / "best.pt") and tl["source_stage"] == "train"
    assert "squeeze adopted the winner" in tl["note"]
    assert (
        OmegaConf.load(tmp_path / "t1" / "config.yaml").model
        == OmegaConf.load(b / ".hydra" / "config.yaml").model
    )


def test_candidates_not_evaluated_are_checked_by_their_recorded_fingerprint(tmp_path):
    """With k=1 only the winner is reloaded; the runner-up (seed reruns) must have validated on
    the same data too: its summary's fingerprint says so without loading it."""
    import json

    from runner.stages.squeeze import validated_elsewhere

    dirs = []
    for name, fp in (("same", "abc"), ("other", "xyz"), ("unknown", None)):
        d = tmp_path / name
        d.mkdir()
        data = {"fingerprint": fp} if fp else {}
        (d / "summary.json").write_text(
            json.dumps({"stage": "train", "best_val_acc": 0.5, "data": data})
        )
        dirs.append(d)
    assert validated_elsewhere(dirs, "abc") == [tmp_path / "other"]


# ----------------------------------------------------------------------------- settings
def test_squeeze_settings_are_checked_before_anything_trains(cli, tmp_path):
    """Every bad setting in one config error (exit 2), each naming its key; a single run dir
    for stage.params.runs is a list of one (not its characters); from= and a different
    stage.params.from are refused."""
    (tmp_path / "a").mkdir()
    r = cli(
        TINY
        + [
            "stage=squeeze",
            "stage.params.k=0",
            "stage.params.seeds=-1",
            "stage.params.continue_epochs=-2",
            "stage.params.runs=nope",
            "from=a",
            "stage.params.from=b",
        ]
    )
    assert r.code == 2, r.out
    assert "Traceback" not in r.out and "val_acc" not in r.out
    for msg in (
        "stage.params.k=0 must be an integer >= 1",
        "stage.params.seeds=-1 must be an integer >= 0",
        "stage.params.continue_epochs=-2 must be null",
        "stage.params.runs[0]=nope is not a directory",
        "stage.params.from=b is not a directory",
        "give one of them",
    ):
        assert msg in r.out, (msg, r.out)
    assert not list(tmp_path.glob("outputs/*/*/checkpoints"))


def test_check_params_types_and_ranges():
    from runner.stages.squeeze import check_params

    DEFAULTS = {"from": None, "runs": [], "k": 3, "seeds": 3, "continue_epochs": None}

    def keys(**kw):
        return [k for k, _ in check_params({**DEFAULTS, **kw})]

    assert keys() == [] and keys(k=1, seeds=0, continue_epochs=0, runs=["x"], **{"from": "d"}) == []
    assert keys(k=True, seeds=2.0, continue_epochs="3") == ["k", "seeds", "continue_epochs"]
    assert keys(runs=["a", 3]) == ["runs"] and keys(runs={"a": 1}) == ["runs"]
    assert keys(**{"from": 5}) == ["from"]
    p = {**DEFAULTS, "runs": "one/dir"}
    assert check_params(p) == [] and p["runs"] == ["one/dir"]


# ----------------------------------------------------------------------------- from=<squeeze dir>
def _fake_run(d: Path, stage: str = "train", summary: bool = True, last: bool = False) -> Path:
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.yaml").write_text(f"stage:\n  name: {stage}\nmodel:\n  name: m_{d.name}\n")
    (d / "checkpoints" / "best.pt").write_bytes(b"x")
    if last:
        (d / "checkpoints" / "last.pt").write_bytes(b"x")
    if summary:
        (d / "summary.json").write_text(json.dumps({"stage": stage, "best_val_acc": 0.5}))
    return d


def test_outcome_of_a_squeeze_run_is_the_run_it_adopted(tmp_path):
    from runner.lineage import outcome

    a, b = _fake_run(tmp_path / "a", "regularize"), _fake_run(tmp_path / "b")
    sq = tmp_path / "sq"
    _fake_run(sq, "squeeze")  # squeeze's own config (its checkpoints do not matter)

    def adopt(what, run, acc=0.75):
        (sq / "summary.json").write_text(
            json.dumps({"stage": "squeeze", "adopted": {"what": what, "run": run, "val_acc": acc}})
        )
        return outcome(sq)

    o = adopt("winner", str(a))
    assert (o.source, o.config_file, o.weights, o.stage) == (
        a,
        a / "config.yaml",
        a / "checkpoints" / "best.pt",
        "regularize",
    )
    assert o.config["model"]["name"] == "m_a" and o.note.startswith(
        "squeeze adopted the winner (val acc 0.7500)"
    )
    o = adopt("continued", str(b))
    assert o.source == b and "squeeze adopted the continued" in o.note
    o = adopt("ensemble", [str(b), str(a)])  # ranked best first: the first member
    assert o.source == b and o.weights == b / "checkpoints" / "best.pt"
    assert "ensemble of 2" in o.note and "best-ranked member b" in o.note
    with pytest.raises(ConfigError, match="not a directory any more"):
        adopt("winner", str(tmp_path / "gone"))


def test_outcome_refuses_an_unfinished_run(tmp_path):
    from runner.lineage import outcome

    crashed = _fake_run(tmp_path / "crashed", summary=False)
    with pytest.raises(ConfigError) as e:
        outcome(crashed)
    assert str(crashed) in str(e.value) and "has not finished" in str(e.value)
    assert "resume=" not in str(e.value)
    stopped = _fake_run(tmp_path / "stopped", summary=False, last=True)
    with pytest.raises(ConfigError, match=r"has not finished.*resume=" + str(stopped)):
        outcome(stopped)
    hydra_only = tmp_path / "refused" / ".hydra"  # a config error's leftover
    hydra_only.mkdir(parents=True)
    (hydra_only / "config.yaml").write_text("stage:\n  name: train\n")
    with pytest.raises(ConfigError, match="has not finished"):
        outcome(hydra_only.parent)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no run there"):
        outcome(tmp_path / "empty")
    assert outcome(_fake_run(tmp_path / "done")).source == tmp_path / "done"


def test_the_runner_up_is_another_recipe_than_the_winner(cli, tmp_path):
    """A candidate that trains the winner's recipe again (another seed, a tune warm start from
    its weights: the same config from scratch) is passed over; the next one is the runner-up."""
    from runner.stages.squeeze import recipe_key, runner_up

    base = FAST + ["stage=train", "trainer.epochs=1"]
    dirs = []
    for extra in (["seed=0"], ["seed=1", "trainer.progress=true"], ["optim.lr=0.001"]):
        r = cli(base + extra + [f"hydra.run.dir={tmp_path / str(len(dirs))}"])
        assert r.code == 0, r.out
        dirs.append(tmp_path / str(len(dirs)))
    assert recipe_key(dirs[0]) == recipe_key(dirs[1]) != recipe_key(dirs[2])
    assert runner_up(dirs) == dirs[2]
    assert runner_up(dirs[:2]) is None and runner_up(dirs[:1]) is None
