"""data=wds: WebDataset tar shards. The same images as an image folder, written as shards in
the folder's sample order, are the same data (counts, classes, fingerprint, seeded training
curves); inspect reads them; bad shards exit 2 naming the shard."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_contract, compose, metric_rows, run_cli
from PIL import Image

CLASSES = ("cat", "dog", "bird")
SIZE = 16
FAST = [
    "trainer.epochs=2",
    "trainer.batch_size=8",
    "trainer.progress=false",
    "data.num_workers=0",
    "trainer.threads=1",
    "model=tiny_cnn",
    f"data.image_size={SIZE}",
    "seed=3",
]


def make_folder(root: Path, n_train=8, n_val=3, seed=0) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png: distinct 16 px images, each class
    its own tint."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                a = rng.integers(0, 120, (SIZE, SIZE, 3))
                a[..., c] += 120
                Image.fromarray(a.astype(np.uint8)).save(d / f"{cls}{k}.png")
    return root


def folder_samples(top: Path):
    """(path, class name) of an image folder in the order training reads it."""
    from runner.data import walk_image_folder

    return walk_image_folder(top)[0]


def write_shards(samples, pattern: str, n_shards: int, label=lambda c: c):
    """`samples` written in order into n_shards tar files (webdataset.TarWriter)."""
    import webdataset as wds

    per = -(-len(samples) // n_shards)
    paths = []
    for s in range(n_shards):
        path = Path(pattern.format(s))
        path.parent.mkdir(parents=True, exist_ok=True)
        with wds.TarWriter(str(path)) as w:
            for p, c in samples[s * per : (s + 1) * per]:
                key = f"{c}_{Path(p).stem}"
                w.write({"__key__": key, "png": Path(p).read_bytes(), "cls": label(c)})
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An image folder and the same images as shards: train in 2, val in 1."""
    tmp = tmp_path_factory.mktemp("wds")
    root = make_folder(tmp / "folder")
    shards = tmp / "shards"
    write_shards(folder_samples(root / "train"), str(shards / "train-{:03d}.tar"), 2)
    write_shards(folder_samples(root / "val"), str(shards / "val-{:03d}.tar"), 1)
    return tmp, root, shards


def wds_args(shards: Path, val=True):
    args = ["data=wds", f"data.shards.train='{shards}/train-{{000..001}}.tar'"]
    if val:
        args.append(f"data.shards.val={shards}/val-000.tar")
    return args


def built(overrides, cwd):
    from runner.data import build_data

    cfg = compose(overrides)
    return build_data(cfg.data, original_cwd=str(cwd))


def test_shards_are_the_folder(data):
    tmp, root, shards = data
    a = built(["data=imagefolder", f"data.root={root}", f"data.image_size={SIZE}"], tmp)
    b = built([*wds_args(shards), f"data.image_size={SIZE}"], tmp)
    assert b.kind == "wds"
    assert (len(a.train), len(a.val)) == (len(b.train), len(b.val)) == (24, 9)
    assert a.class_names == b.class_names == sorted(CLASSES)
    assert a.fingerprint == b.fingerprint
    assert a.train.labels.tolist() == b.train.labels.tolist()
    assert b.train.name(0).startswith("train-000.tar:")
    xa, ya = a.train.load(5)
    xb, yb = b.train.load(5)
    assert ya == yb and (xa == xb).all()


def test_val_carved_from_train_shards_as_from_a_folder(data):
    tmp, root, shards = data
    a = built(["data=imagefolder", f"data.root={root}/train", "data.test_fraction=0.2"], tmp)
    b = built([*wds_args(shards, val=False), "data.test_fraction=0.2"], tmp)
    assert [len(x.train) for x in (a, b)] == [len(a.train)] * 2
    assert len(a.val) == len(b.val) and len(a.test) == len(b.test)
    assert a.fingerprint == b.fingerprint


def test_integer_cls_and_json_groups(tmp_path):
    """cls as an index keeps its numbers as class names; a json member's group field groups
    the samples (every split is then made by group)."""
    from runner.sources import wds as source

    path = tmp_path / "s.tar"
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (9, 9, 9)).save(buf, format="PNG")
    with tarfile.open(path, "w") as tar:
        for k in range(12):
            for ext, raw in (
                ("png", buf.getvalue()),
                ("cls", str(k % 2).encode()),
                ("json", json.dumps({"patient": f"p{k // 2}"}).encode()),
            ):
                info = tarfile.TarInfo(f"x/{k:04d}.{ext}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    cfg = compose(["data=wds", f"data.shards.train={path}", "data.group_column=patient"]).data
    rec = source.records(cfg, tmp_path)
    assert rec.class_names == ["0", "1"] and rec.labels.tolist() == [k % 2 for k in range(12)]
    assert rec.names[3] == "s.tar:x/0003" and rec.group[3] == "p1"
    assert rec.raw(0) == buf.getvalue()


def test_seeded_training_is_the_folders(data, tmp_path):
    _, root, shards = data
    a = run_cli(["stage=train", "data=imagefolder", f"data.root={root}", *FAST], tmp_path / "a")
    assert a.code == 0, a.out
    b = run_cli(["stage=train", *wds_args(shards), *FAST], tmp_path / "b")
    assert b.code == 0, b.out
    rows = metric_rows(a.run_dir)
    assert len(rows) >= 2 and rows == metric_rows(b.run_dir)
    assert b.json("summary.json")["data"]["kind"] == "wds"


def test_inspect_reads_shards(cli, data):
    _, _, shards = data
    r = cli(["stage=inspect", *wds_args(shards), "data.num_workers=0", "trainer.progress=false"])
    assert r.code in (0, 1), r.out
    assert_contract(r.run_dir)
    s = r.json("summary.json")
    assert s["data"]["kind"] == "wds" and s["images"] == 33 and s["readable"] == 33


def _bad(tmp: Path, name: str, members):
    path = tmp / name
    with tarfile.open(path, "w") as tar:
        for fname, raw in members:
            info = tarfile.TarInfo(fname)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_shards_exit_2_naming_the_shard(cli, data, tmp_path):
    _, _, shards = data
    good = f"data.shards.train='{shards}/train-{{000..001}}.tar'"
    (tmp_path / "notatar.tar").write_bytes(b"hello, not a tar" * 100)
    _bad(tmp_path, "empty.tar", [])
    _bad(tmp_path, "nolabel.tar", [("a.png", _png()), ("a.cls", b"cat"), ("b.png", _png())])
    _bad(tmp_path, "noimage.tar", [("a.png", _png()), ("a.cls", b"cat"), ("b.cls", b"dog")])
    _bad(tmp_path, "newclass.tar", [("a.png", _png()), ("a.cls", b"zebra")])
    cases = {
        "missing": ([f"data.shards.train='{shards}/train-{{000..004}}.tar'"], "train-002.tar"),
        "notatar": ([good, f"data.shards.val={tmp_path}/notatar.tar"], "notatar.tar"),
        "empty": ([good, f"data.shards.val={tmp_path}/empty.tar"], "empty.tar"),
        "nolabel": ([good, f"data.shards.val={tmp_path}/nolabel.tar"], "nolabel.tar:b"),
        "noimage": ([good, f"data.shards.val={tmp_path}/noimage.tar"], "noimage.tar:b"),
        "newclass": ([good, f"data.shards.val={tmp_path}/newclass.tar"], "newclass.tar:a"),
        "notrain": ([f"data.shards.val={tmp_path}/newclass.tar"], "data.shards.train"),
    }
    for what, (args, needle) in cases.items():
        r = cli(["stage=train", "data=wds", *args, *FAST, f"name={what}"])
        assert r.code == 2, (what, r.out)
        assert needle in r.out, (what, r.out)
    r = cli(["stage=train", "data=wds", good, "data.stream=true", *FAST])
    assert r.code == 2 and "not supported yet" in r.out, r.out
