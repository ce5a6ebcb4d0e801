"""The check registry (runner/checks/registry.py) is the one list of checks: every name a
checks.json can hold is registered, has its settings in the schema, and can be switched off."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from conftest import FAST, REPO, compose

from runner.checks.registry import CHECKS, CheckSettings
from runner.stages import STAGES
from runner.stages.protocol import run_check


def test_every_entry_points_at_a_function_and_a_stage():
    for c in CHECKS.values():
        module, fn = c.where.split(":")
        assert callable(getattr(importlib.import_module(module), fn)), c.where
        assert c.stage in STAGES, (c.name, c.stage)
        assert issubclass(c.settings, CheckSettings) and c.settings().enabled is True
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", c.name), c.name
        assert c.doc


def test_every_check_name_in_the_code_is_registered():
    """A Verdict named in runner/ (Verdict("x.y", ...), name = "x.y", skip("x.y", ...)) that
    the registry does not list could never be switched off."""
    pattern = re.compile(
        r'(?:Verdict\(|skip\(|disabled\(|run_check\([^,]+, |name = )"([a-z]+\.[a-z_]+)"'
    )
    found = set()
    for path in (REPO / "runner").rglob("*.py"):
        found |= set(pattern.findall(path.read_text()))
    assert found, "the scan found no check names at all"
    assert sorted(found - set(CHECKS)) == []


def test_every_check_has_typed_settings_in_the_schema():
    cfg = compose(["stage=baseline"])
    for c in CHECKS.values():
        node = cfg.checks[c.key]
        assert node.enabled is True, c.key
        for f, v in c.settings().__dict__.items():
            assert node[f] == v, (c.key, f)
    # a wrong type or an unknown setting fails at compose time
    with pytest.raises(Exception, match="checks.init_loss.tolerance"):
        compose(["checks.init_loss.tolerance=abc"])
    with pytest.raises(Exception, match="tolerence"):
        compose(["checks.init_loss.tolerence=1"])


def test_a_switched_off_check_is_a_skip_and_never_runs():
    cfg = compose(["stage=baseline", *[f"checks.{c.key}.enabled=false" for c in CHECKS.values()]])

    def boom(settings):
        raise AssertionError("a switched-off check ran")

    for c in CHECKS.values():
        v = run_check(cfg.checks, c.name, boom)
        assert v.status == "skip" and v.name == c.name
        assert v.message == f"checks.{c.key}.enabled=false"


@pytest.mark.slow
def test_every_check_of_every_stage_can_be_switched_off_end_to_end(cli):
    """One recipe (inspect, baseline, overfit, regularize, squeeze) with every registered check
    switched off: exit 0, and every check of those stages is in a checks.json as `skip`."""
    off = [f"checks.{c.key}.enabled=false" for c in CHECKS.values()]
    rungs = 'stage.params.rungs=[{name:wd,overrides:["optim.weight_decay=1e-4"]}]'
    r = cli(
        FAST
        + [
            "model.name=test_resnet",
            "trainer.epochs=1",
            "checks.predictions.enabled=false",
            "stage=recipe",
            "stage.params.stages=[inspect,baseline,overfit,regularize,squeeze]",
            f"stage.params.per_stage.regularize=['{rungs}']",
            'stage.params.per_stage.squeeze=["stage.params.seeds=2","stage.params.continue_epochs=0"]',
            *off,
        ]
    )
    assert r.code == 0, r.out
    statuses = {}
    for f in Path(r.run_dir).rglob("checks.json"):
        for v in r.json("checks.json", f.parent):
            statuses.setdefault(v["name"], set()).add(v["status"])
    ran = {
        c.name
        for c in CHECKS.values()
        if c.stage in ("inspect", "baseline", "overfit", "regularize", "squeeze", "recipe", "train")
    }
    assert ran - set(statuses) == set()
    assert {n: s for n, s in statuses.items() if s != {"skip"}} == {}
