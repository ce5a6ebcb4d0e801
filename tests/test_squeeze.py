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
    # runs/0 (seed 0) and runs/1 (seed 7)
    r = cli(["-m", *TINY, "stage=train", "hydra.sweep.dir=runs", "seed=0,7"])
    assert r.code == 0, r.out
    a, b = tmp_path / "runs" / "0", tmp_path / "runs" / "1"
    q = cli(FAST + ["stage=squeeze", "hydra.run.dir=sq", "stage.params.runs=[runs/0,runs/1]",
                    "stage.params.k=2", "stage.params.seeds=2", "stage.params.continue_epochs=1"])
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
        (str(w_dir), "seed rerun", win), (str(u_dir), "seed rerun", up),
        (str(sq / "continued"), "continued", win)]
    assert lin["options"] == s["options"] and lin["adopted"] == s["adopted"] == choose(s["options"])
    assert "Started from" in (sq / "report.html").read_text()

    # sub-runs: squeeze's (summary, title, log), trained on the candidate's config, with lineage
    subs = {w_dir: ("seed rerun", win), u_dir: ("seed rerun", up), sq / "continued": ("continued", win)}
    for d, (role, cand) in subs.items():
        ss = q.json("summary.json", d)
        assert (ss["stage"], ss["role"], ss["candidate"]) == ("squeeze", role, cand), d
        assert ss["candidate_stage"] == "train" and ss["from"]["source"] == cand
        assert ss["model"] == q.json("summary.json", Path(cand))["model"]
        sl = q.json("lineage.json", d)
        assert (sl["source"], sl["stage"], sl["role"], sl["source_stage"]) == \
            (cand, "squeeze", role, "train")
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
        assert [ln.split("]")[-1].split(":")[0].strip() for ln in log if ln.endswith(str(d))] == ["squeeze"]
    assert_contract(sq, w_dir, u_dir, sq / "continued")


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
        (d / "summary.json").write_text(json.dumps({"best_val_acc": 0.5, "data": data}))
        dirs.append(d)
    assert validated_elsewhere(dirs, "abc") == [tmp_path / "other"]
