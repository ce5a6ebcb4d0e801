"""report.html: the header, the verdict banner, links between run and sweep reports, plots."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import List, Tuple

from conftest import FAST, assert_contract

from runner.report import (
    Report,
    checks_section,
    related_links,
    run_facts,
    run_files,
    run_kpis,
    verdict_banner,
    verdict_counts,
)


class _Refs(HTMLParser):
    """Every href/src and every id in a page."""

    def __init__(self):
        super().__init__()
        self.refs: List[Tuple[str, str]] = []
        self.ids: set = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append((tag, a[key]))


def page_refs(path: Path) -> _Refs:
    p = _Refs()
    p.feed(path.read_text())
    return p


def dangling(report: Path) -> List[str]:
    """Relative links and images of a report that point at nothing."""
    p = page_refs(report)
    bad = []
    for _, ref in p.refs:
        if re.match(r"^[a-z]+:", ref):  # http:, file:, ...: not ours
            continue
        if ref.startswith("#"):
            if ref[1:] not in p.ids:
                bad.append(ref)
        elif not (report.parent / ref.split("#")[0]).exists():
            bad.append(ref)
    return bad


SUMMARY = {
    "stage": "train",
    "name": "exp1",
    "status": "finished",
    "val_acc": 0.8125,
    "val_loss": 0.5,
    "train_loss": 0.25,
    "best_val_acc": 0.875,
    "best_epoch": 3,
    "epochs": 4,
    "params": 23492,
    "images_per_s": 1234.5,
    "wall_s": 12.34,
    "human_baseline": None,
    "model": "resnet18",
    "data": {
        "kind": "digits",
        "num_train": 1437,
        "num_val": 360,
        "num_classes": 10,
        "in_chans": 1,
        "image_size": 32,
    },
    "provenance": {"device": "cpu", "device_name": "x86_64", "threads": 2},
    "run_dir": "/runs/a",
}


def test_header_facts_and_key_figures_of_a_run():
    facts = run_facts(SUMMARY)
    assert facts == {
        "stage": "train",
        "experiment": "exp1",
        "data": "digits · 1437 train / 360 val · 10 classes · 1×32×32 px",
        "model": "resnet18 · 23,492 parameters",
        "device": "cpu (x86_64, 2 threads)",
        "run": "/runs/a",
    }
    kpis = run_kpis(SUMMARY)
    assert kpis == {
        "val accuracy": "81.25%",
        "best val accuracy": "87.50% (epoch 3)",
        "val loss": 0.5,
        "train loss": 0.25,
        "epochs": 4,
        "images/s": "1,234",
        "wall time": "12.3 s",
        "parameters": "23,492",
    }  # no human baseline
    stopped = dict(SUMMARY, status="nonfinite", error="loss became nan at step 7", name="default")
    facts = run_facts(stopped)
    assert facts["status"] == "nonfinite: loss became nan at step 7" and "experiment" not in facts
    assert run_kpis({"stage": "inspect", "val_acc": None, "val_loss": float("nan")}) == {}
    # a stage that trains nothing (inspect): no epochs, parameters or image shape to show
    inspect = {
        "stage": "inspect",
        "epochs": 0,
        "params": 0,
        "images": 40,
        "wall_s": 1.5,
        "data": {"kind": "imagefolder", "num_train": 30, "num_val": 10, "num_classes": 2},
    }
    assert run_kpis(inspect) == {"images": 40, "wall time": "1.5 s"}
    assert run_facts(inspect)["data"] == "imagefolder · 30 train / 10 val · 2 classes"


def test_verdict_banner_says_the_worst_outcome_and_all_counts():
    def status(html):
        return re.search(r'data-status="(\w+)"', html).group(1)

    html = verdict_banner({"pass": 8, "warn": 1, "fail": 2, "skip": 1})
    assert status(html) == "fail" and "2 of 12 checks failed" in html
    assert "8 pass / 1 warn / 2 fail / 1 skip" in html
    assert status(verdict_banner({"pass": 3, "warn": 1})) == "warn"
    assert "all 3 checks passed" in verdict_banner({"pass": 3})
    assert status(verdict_banner({})) == "skip" and "no checks ran" in verdict_banner({})
    assert verdict_counts([{"status": "pass"}, {"status": "fail"}, {"status": "pass"}]) == {
        "pass": 2,
        "warn": 0,
        "fail": 1,
        "skip": 0,
    }


def test_report_escapes_what_it_shows_and_links_its_parts(tmp_path):
    rep = Report(
        "<b>title</b>",
        facts={"data": "a<script>"},
        kpis={"x": "<i>"},
        counts={"pass": 1},
        links=[("↑ sweep summary", "../report.html")],
        files=["metrics.csv"],
    )
    rep.add(
        "Checks",
        checks_section(
            [
                {
                    "name": "init.loss",
                    "status": "pass",
                    "value": 2.3,
                    "expected": "2.30 +/- 0.25",
                    "message": "ok <3",
                    "artifacts": ["plots/init_loss.png"],
                }
            ]
        ),
    )
    html = rep.render()
    assert "<b>title</b>" not in html and "&lt;b&gt;title&lt;/b&gt;" in html
    assert "a<script>" not in html and "ok &lt;3" in html and "<i>" not in html
    assert '<a href="../report.html">↑ sweep summary</a>' in html
    assert '<a href="metrics.csv">metrics.csv</a>' in html
    assert "<script>" not in html  # no sortable table, so no script at all
    page = tmp_path / "report.html"
    page.write_text(html)
    refs = page_refs(page)
    assert ("a", "#check-init-loss") in refs.refs and "check-init-loss" in refs.ids
    assert ("img", "plots/init_loss.png") in refs.refs
    assert set(dangling(page)) == {"../report.html", "metrics.csv", "plots/init_loss.png"}


def test_related_links_point_up_to_a_parent_run(tmp_path):
    parent = tmp_path / "recipe_run"
    (parent / ".hydra").mkdir(parents=True)
    child = parent / "baseline"
    child.mkdir()
    assert related_links(child) == [("↑ parent run", "../report.html")]
    assert related_links(parent) == []  # the stage has no report yet
    (child / "report.html").write_text("<!doctype html>")
    assert related_links(parent) == [("↓ baseline", "baseline/report.html")]
    (child / "metrics.csv").write_text("epoch\n")
    (child / "summary.json").write_text("{}")
    (child / "images.csv").write_text("x\n")
    (child / ".tmp").write_text("")
    assert run_files(child) == ["metrics.csv", "summary.json", "images.csv"]


def test_sweep_job_reports_link_to_the_sweep_summary_and_back(cli):
    r = cli(["-m", *FAST, "stage=train", "trainer.epochs=1", "seed=0,1"])
    assert r.code == 0, r.out
    (sweep,) = [p for p in r.cwd.glob("multirun/*/*") if p.is_dir()]
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    assert_contract(*jobs)
    sweep_refs = {ref for _, ref in page_refs(sweep / "report.html").refs}
    for job in jobs:
        html = (job / "report.html").read_text()
        assert '<a href="../report.html">↑ sweep summary</a>' in html
        assert f"{job.name}/report.html" in sweep_refs  # the sweep links down to each job
        assert dangling(job / "report.html") == []  # images, files, anchors, the sweep link
    assert dangling(sweep / "report.html") == []


def test_every_curve_panel_has_a_title_and_labelled_axes():
    from runner import plots

    hist = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_loss": 1.1 / e,
            "train_acc": 0.5 + e / 10,
            "val_acc": 0.4 + e / 10,
            "lr": 1e-3,
        }
        for e in (1, 2, 3)
    ]
    fig = plots.curves(hist, "run: training curves")
    assert fig._suptitle.get_text() == "run: training curves"
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() == "epoch" and ax.get_ylabel()
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert all(float(t).is_integer() for t in ticks)  # whole epochs only
    assert "%" in fig.axes[1].get_ylabel()
    fig = plots.line([3.0, 2.0, 1.0], "Overfit one batch", "optimiser step", "loss", logy=True)
    (ax,) = fig.axes
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
        "Overfit one batch",
        "optimiser step",
        "loss",
    )
