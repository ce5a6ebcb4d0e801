"""`python -m runner init <dir>`: a starter experiment repo that runs from anywhere."""

from __future__ import annotations

import textwrap

from conftest import assert_contract, run_cli


def test_init_writes_a_repo_whose_example_runs_from_elsewhere(tmp_path):
    repo = tmp_path / "my-exps"
    r = run_cli(["init", str(repo)], tmp_path)
    assert r.code == 0, r.out
    for rel in (
        "conf/experiment/example.yaml",
        "conf/data/example.yaml",
        "README.md",
        ".gitignore",
    ):
        assert (repo / rel).is_file(), rel
    assert f"--config-dir {repo / 'conf'} experiment=example" in r.out
    assert "outputs/" in (repo / ".gitignore").read_text().split()
    readme = (repo / "README.md").read_text()
    assert "python -m runner --config-dir conf experiment=example" in readme

    # a user's own option in a packaged group (conf/data/example.yaml extends packaged digits),
    # composed and run from another folder; stage=train on the command line keeps it quick
    r = run_cli(
        [
            "--config-dir",
            str(repo / "conf"),
            "experiment=example",
            "stage=train",
            "trainer.epochs=1",
            "trainer.max_steps_per_epoch=5",
            "trainer.progress=false",
        ],
        tmp_path / "elsewhere",
    )
    assert r.code == 0, r.out
    s = r.json("summary.json")
    assert s["name"] == "example" and s["stage"] == "train" and s["epochs"] == 1
    assert s["data"]["kind"] == "digits" and s["data"]["image_size"] == 24  # the user's change
    assert s["data"]["num_classes"] == 10 and s["model"] == "runner.models.TinyCNN"
    assert_contract(r.run_dir)
    assert "experiment=example" in (r.run_dir / ".hydra" / "overrides.yaml").read_text()


def test_init_starter_experiment_composes_to_the_baseline_stage(tmp_path):
    repo = tmp_path / "repo"
    assert run_cli(["init", str(repo)], tmp_path).code == 0
    r = run_cli(
        ["--config-dir", str(repo / "conf"), "experiment=example", "--cfg", "job"], tmp_path
    )
    assert r.code == 0, r.out
    assert "name: baseline" in r.out and "name: example" in r.out and "image_size: 24" in r.out


def test_user_group_option_overrides_packaged_group_in_init_repo(tmp_path):
    """A second user option added to the starter repo, picked from the command line."""
    repo = tmp_path / "repo"
    assert run_cli(["init", str(repo)], tmp_path).code == 0
    (repo / "conf" / "data" / "squares.yaml").write_text(
        textwrap.dedent("""\
        defaults:
          - synthetic
        num_classes: 3
        num_train: 48
        num_val: 24
        image_size: 8
        num_workers: 0
        """)
    )
    r = run_cli(
        [
            "--config-dir",
            str(repo / "conf"),
            "experiment=example",
            "data=squares",
            "stage=train",
            "trainer.epochs=1",
            "trainer.batch_size=16",
            "trainer.progress=false",
        ],
        tmp_path / "elsewhere",
    )
    assert r.code == 0, r.out
    d = r.json("summary.json")["data"]
    assert (d["kind"], d["num_classes"], d["num_train"], d["image_size"]) == ("synthetic", 3, 48, 8)


def test_init_never_overwrites_without_force(tmp_path):
    repo = tmp_path / "repo"
    assert run_cli(["init", str(repo)], tmp_path).code == 0
    mine = repo / "conf" / "experiment" / "example.yaml"
    mine.write_text("# @package _global_\nname: edited\n")
    r = run_cli(["init", str(repo)], tmp_path)
    assert r.code == 2
    assert "example.yaml" in r.out and "--force" in r.out and "nothing was written" in r.out
    assert mine.read_text().endswith("name: edited\n")
    r = run_cli(["init", str(repo), "--force"], tmp_path)
    assert r.code == 0, r.out
    assert "name: example" in mine.read_text()


def test_init_bad_usage_is_exit_2(tmp_path):
    r = run_cli(["init"], tmp_path)
    assert r.code == 2 and "dir" in r.out
    (tmp_path / "afile").write_text("x")
    r = run_cli(["init", "afile"], tmp_path)
    assert r.code == 2 and "is a file" in r.out


# ----------------------------------------------------------------------------- --help
def test_help_lists_stages_groups_examples_without_importing_torch(tmp_path):
    import os
    import re
    import subprocess
    import sys

    from conftest import REPO

    from runner.help import stage_summary
    from runner.stages import STAGES

    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "runner", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout
    stages = out.split("Stages (stage=NAME)")[1].split("Config groups")[0]
    for name, module in STAGES.items():  # one line per registered stage, with its docstring
        summary = stage_summary(module)
        assert summary and re.search(rf"^  {name} +{re.escape(summary)}$", stages, re.M), name
    assert len([ln for ln in stages.splitlines() if ln.startswith("  ")]) == len(STAGES)
    # in the recipe's order: inspect (stage 1) before baseline (stage 2)
    assert stages.index("  inspect ") < stages.index("  baseline ")
    for group in ("data", "model", "optim", "sched", "aug", "logger", "stage", "experiment"):
        options = sorted(f.stem for f in (REPO / "conf" / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in out
    examples = out.split("Examples:")[1].split("\n\n")[0].strip().splitlines()
    assert len(examples) == 3 and all(e.strip().startswith("python -m runner ") for e in examples)
    assert "--config-dir" in out and "-sc install=bash" in out and "Exit codes" in out
    # STYLE habit 11: --help does not import torch or timm (python -X importtime lists modules)
    imported = re.findall(r"\|\s+([\w.]+)\s*$", p.stderr, re.M)
    assert imported and not [m for m in imported if m.split(".")[0] in ("torch", "timm", "mlflow")]


def test_help_shows_a_user_config_dir_group_option(tmp_path):
    repo = tmp_path / "repo"
    assert run_cli(["init", str(repo)], tmp_path).code == 0
    r = run_cli(["--config-dir", str(repo / "conf"), "--help"], tmp_path)
    assert r.code == 0
    assert "data: custom, digits, example, hf, imagefolder, manifest" in r.out
    assert "experiment: digits_resnet, example" in r.out


def test_shell_completion_offers_stages(tmp_path):
    from runner.stages import STAGES

    line = "recipe-runner stage="
    r = run_cli(
        ["-sc", "query=bash"], tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))}
    )
    assert r.code == 0, r.out
    assert sorted(r.out.split()) == sorted(f"stage={s}" for s in STAGES)
