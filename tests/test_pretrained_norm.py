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


def test_pretrained_input_size_and_interpolation_are_the_weights_by_default():
    pre = ["model=timm", f"model.name={MODEL}", "model.pretrained=true"]
    cfg = compose(["data=digits", *pre])
    assert (cfg.data.image_size, cfg.data.interpolation) == (176, "bicubic")  # resnet10t's
    plain = compose(["data=digits", "model=timm", f"model.name={MODEL}"])
    assert (plain.data.image_size, plain.data.interpolation) == (16, "bilinear")
    # set by the user: kept (input.pretrained_norm then warns)
    own = compose(["data=digits", *pre, "data.image_size=32", "data.interpolation=bilinear"])
    assert (own.data.image_size, own.data.interpolation) == (32, "bilinear")
    data = build_data(cfg.data, model=cfg.model)
    assert data.image_size == 176 and data.interpolation == "bicubic"
    assert tuple(data.train.x.shape[-2:]) == (176, 176)


def _folder(root, n=12, size=200):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        a = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(a).save(d / f"{i}.png")
    return root


def test_a_folder_is_fed_at_the_weights_size_and_filter_and_other_ones_are_warned(cli, tmp_path):
    import timm

    name = "test_efficientnet"  # 160 px, bicubic in its pretrained config; 0.36M parameters
    w = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model(name, num_classes=2).state_dict(), w)
    base = [
        "stage=baseline",
        "data=imagefolder",
        f"data.root={_folder(tmp_path / 'imgs')}",
        "data.num_workers=0",
        "trainer.epochs=1",
        "trainer.batch_size=8",
        "trainer.progress=false",
        "trainer.threads=1",
        "model=timm",
        f"model.name={name}",
        "model.pretrained=true",
        f"model.pretrained_file={w}",
        "checks.train_loss_decreases.enabled=false",  # random pixels: nothing to learn
        # random "pretrained" weights on random pixels: their logits at init can be large
        # (one run in a few gave init loss 2.4 vs log 2), which is no input-pipeline matter
        "checks.init_loss.enabled=false",
        "checks.init_bias.enabled=false",
        *OFF,
    ]
    r = cli(base)
    assert r.code == 0, r.out
    data = r.json("summary.json")["data"]
    assert (data["image_size"], data["interpolation"]) == (160, "bicubic")
    v = {c["name"]: c for c in r.json("checks.json")}["input.pretrained_norm"]
    assert v["status"] == "pass", v["message"]

    r = cli([*base, "data.image_size=64", "data.interpolation=bilinear"])
    assert r.code == 0, r.out
    v = {c["name"]: c for c in r.json("checks.json")}["input.pretrained_norm"]
    assert v["status"] == "warn"
    assert "image size 64 px but the weights were trained at 160x160 px" in v["message"]
    assert "bilinear resize but the weights expect bicubic" in v["message"]
