"""A pretrained model gets the input statistics its weights were trained with (issue 16 item
5): with data.mean/std null the data pipeline takes them from timm's pretrained config, the
summary says where they came from, and input.pretrained_norm passes; mean/std the user set
to other values keep theirs and the check warns naming the difference. No download: the
weights file is one the test saves."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, compose

from runner.data import build_data

MODEL = "resnet10t"  # ImageNet statistics in its pretrained config, ~5M parameters
# the checks that train copies of the model are off: this test is about the input pipeline
OFF = [
    f"checks.{k}.enabled=false"
    for k in (
        "train_grads_flow",
        "train_batch_independence",
        "seed_determinism",
        "predictions",
        "baseline_input_independent",
        "baseline_overfit_batch",
        "eval_repeatable",
    )
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import timm

    path = tmp_path_factory.mktemp("weights") / f"{MODEL}.pth"
    torch.save(timm.create_model(MODEL, pretrained=False).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def expected():
    import timm

    with torch.device("meta"):
        dc = timm.data.resolve_model_data_config(timm.create_model(MODEL))
    return [float(v) for v in dc["mean"]], [float(v) for v in dc["std"]]


def args(weights):
    # 3 channels: the pretrained config's mean/std apply as they are; 1 epoch of 64 images;
    # 32 px is not the weights' 176 px (fine-tuning at another size), so the size is not listed
    return [
        *FAST,
        "data.channels=3",
        "data.num_train=64",
        "data.num_val=32",
        "trainer.epochs=1",
        "model=timm",
        f"model.name={MODEL}",
        "model.pretrained=true",
        f"model.pretrained_file={weights}",
        "checks.input_pretrained_norm.check_size=false",
        *OFF,
    ]


def test_build_data_takes_mean_std_from_the_pretrained_config(expected):
    cfg = compose(
        [
            "data=synthetic",
            "data.channels=3",
            "model=timm",
            f"model.name={MODEL}",
            "model.pretrained=true",
        ]
    )
    data = build_data(cfg.data, model=cfg.model)
    assert [list(data.mean), list(data.std)] == list(expected)
    assert data.norm_from == f"pretrained config of {MODEL}"
    # a grey pipeline gets the channel average (timm sums the first conv over RGB)
    grey = build_data(
        compose(["data=digits", "model=timm", f"model.name={MODEL}", "model.pretrained=true"]).data,
        model=cfg.model,
    )
    assert grey.mean == pytest.approx([sum(expected[0]) / 3])
    # not pretrained / no model node: measured; set in the config: the config's
    assert build_data(cfg.data).norm_from == "measured on the training set"
    cfg_set = compose(["data=synthetic", "data.channels=3", "data.mean=[0.5]", "data.std=[0.5]"])
    own = build_data(cfg_set.data, model=cfg.model)
    assert own.mean == (0.5, 0.5, 0.5) and own.norm_from == "config"


def test_pretrained_model_gets_its_own_statistics_and_the_check_passes(cli, weights, expected):
    r = cli(["stage=baseline", *args(weights)])
    assert r.code == 0, r.out
    data = r.json("summary.json")["data"]
    assert [data["mean"], data["std"]] == list(expected)
    assert data["norm_from"] == f"pretrained config of {MODEL}"
    assert f"(pretrained config of {MODEL})" in r.out  # logged
    v = {c["name"]: c for c in r.json("checks.json")}["input.pretrained_norm"]
    assert v["status"] == "pass", v["message"]


def test_other_statistics_set_by_the_user_are_kept_and_warned_about(cli, weights):
    r = cli(["stage=baseline", *args(weights), "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"])
    assert r.code == 0, r.out  # a warning does not fail the run
    data = r.json("summary.json")["data"]
    assert data["mean"] == [0.5] * 3 and data["norm_from"] == "config"
    v = {c["name"]: c for c in r.json("checks.json")}["input.pretrained_norm"]
    assert v["status"] == "warn"
    assert "mean [0.5, 0.5, 0.5] but the weights expect [0.485, 0.456, 0.406]" in v["message"]
    assert "data.std=[0.229,0.224,0.225]" in v["message"]
