"""stage=baseline end to end through the CLI: every check runs, lands in checks.json and the
report, and the run directory holds to the contract; a bug fails the run with exit code 1."""

from __future__ import annotations

from dataclasses import fields

from conftest import FAST, assert_contract, compose

from runner.checks.registry import CHECKS
from runner.config import ChecksConfig

# the checks stage=baseline runs, in the registry's (the recipe's) order
BASELINE_CHECKS = [
    c.name for c in CHECKS.values() if c.stage == "baseline" or c.name == "train.finite"
]

# learns within 2 epochs; one thread: on a shared 2-core CPU, spinning OpenMP threads cost ~10x
TINY = [*FAST, "model.kwargs.width=8", "optim.lr=3e-3", "trainer.threads=1"]


def test_baseline_stage_runs_every_check_and_writes_the_evidence(cli):
    r = cli(["stage=baseline", *TINY, "human_baseline=0.98"])
    assert r.code == 0, r.out
    assert_contract(r.run_dir)
    checks = r.json("checks.json")
    assert [c["name"] for c in checks] == list(BASELINE_CHECKS)
    # input.pretrained_norm has nothing to compare for a model trained from scratch, and
    # eval.bn_stats nothing in a model without BatchNorm (TinyCNN)
    skipped = ("input.pretrained_norm", "eval.bn_stats")
    expected = {n: "skip" if n in skipped else "pass" for n in BASELINE_CHECKS}
    assert {c["name"]: c["status"] for c in checks} == expected, [
        (c["name"], c["message"]) for c in checks if c["status"] != "pass"
    ]
    by = {c["name"]: c for c in checks}
    for name in ("input.stats", "baseline.overfit_batch", "baseline.input_independent"):
        assert by[name]["artifacts"], name
    assert all(c.get("seconds") is not None for c in checks)
    for plot in ("prediction_dynamics", "confusion_matrix", "top_losses", "input_stats_grid"):
        assert (r.run_dir / "plots" / f"{plot}.png").exists(), plot
    html = (r.run_dir / "report.html").read_text()
    for title in (
        "Prediction dynamics",
        "Confusion matrix",
        "Top-loss validation examples",
        "Baselines",
        "Check cost",
    ):
        assert title in html
    summary = r.json("summary.json")
    assert set(summary["check_seconds"]) == set(BASELINE_CHECKS) | {"predictions"}
    assert summary["baselines"]["majority_acc"] is not None
    assert summary["baselines"]["human_baseline"] == 0.98
    assert "human 98.0%" in by["baseline.input_independent"]["message"]
    for name in BASELINE_CHECKS:
        assert f"check: {name}" in r.out, name


def test_a_broken_model_fails_the_run_with_exit_code_1(cli, tmp_path):
    (tmp_path / "zoo.py").write_text(
        "from runner.models import TinyCNN\n"
        "class Probs(TinyCNN):\n"
        "    def forward(self, x):\n"
        "        return super().forward(x).softmax(1)\n"
    )
    off = [
        f"checks.{k}.enabled=false"
        for k in (
            "train_grads_flow",
            "train_batch_independence",
            "seed_determinism",
            "predictions",
            "baseline_input_independent",
        )
    ]
    r = cli(
        [
            "stage=baseline",
            *TINY,
            "model._target_=zoo.Probs",
            "trainer.epochs=1",
            *off,
            "checks.baseline_overfit_batch.steps=60",
        ]
    )
    assert r.code == 1, r.out
    status = {c["name"]: c["status"] for c in r.json("checks.json")}
    assert status["baseline.overfit_batch"] == "fail"
    assert status["train.grads_flow"] == status["baseline.input_independent"] == "skip"
    assert "failed checks: baseline.overfit_batch" in r.out


def test_typo_in_a_check_setting_is_a_config_error(cli):
    # the checks schema is typed (runner/checks/registry.py): a typo fails at compose time,
    # with or without '+', naming the closest setting
    for typo in ("checks.init_loss.tolerence=0.5", "+checks.init_loss.tolerence=0.5"):
        # the CLI's own process: its exit code and what it prints, with no traceback
        r = cli(["stage=baseline", *TINY, typo], process=True)
        assert r.code == 2, r.out
        assert (
            "checks.init_loss has no key 'tolerence'; did you mean "
            "'checks.init_loss.tolerance'?" in r.out
        )
        assert "Traceback" not in r.out


def test_every_baseline_check_has_its_settings_in_the_schema():
    names = {f.name for f in fields(ChecksConfig)}
    for check in BASELINE_CHECKS:
        key = check.replace(".", "_")
        assert key in names, key
        assert getattr(ChecksConfig(), key).enabled is True
    cfg = compose(["stage=baseline", "checks.init_loss.tolerance=0.5"])
    assert cfg.checks.init_loss.tolerance == 0.5
