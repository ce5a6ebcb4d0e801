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


# ----------------------------------------------------------------------------- streamed
def test_split_by_rank_deals_disjoint_shards():
    from runner.sources.wds import epoch_shards, split_by_rank

    shards = [f"s{k}.tar" for k in range(7)]
    for epoch in (0, 1):
        order = epoch_shards(shards, True, 5, epoch)
        got = [[d["url"] for d in split_by_rank(({"url": u} for u in order), r, 2)] for r in (0, 1)]
        assert not set(got[0]) & set(got[1]) and sorted(got[0] + got[1]) == shards
        assert len(got[0]) == 4 and len(got[1]) == 3
    assert epoch_shards(shards, True, 5, 0) != epoch_shards(shards, True, 5, 1)
    assert epoch_shards(shards, True, 5, 1) == epoch_shards(shards, True, 5, 1)


def test_stream_loader_reads_every_train_sample_once(data):
    """One epoch of the streamed loader: every train sample (carved val left out) once, with
    its label; two DDP ranks read disjoint shards of equal batch counts."""
    import torch

    tmp, root, shards = data
    b = built([*wds_args(shards, val=False), "data.stream=true", f"data.image_size={SIZE}"], tmp)
    tr = b.train
    assert type(tr).__name__ == "ShardStreamSplit" and len(b.val) == 6
    assert any("data.stream=true" in n for n in b.notes)
    loader = tr.loader(4, False, 0, torch.device("cpu"), train=False)
    ys = torch.cat([y for _, y in loader.epoch(0)])
    assert sorted(ys.tolist()) == sorted(tr.labels.tolist()) and len(ys) == len(tr) == 18
    ranks = [
        tr.loader(4, True, 0, torch.device("cpu"), train=True, rank=r, world=2) for r in (0, 1)
    ]
    # a global batch of 4: 2 a rank; each rank reads one of the two shards (about 9 samples)
    n = min(tr.shard_counts.values()) // 2
    assert len(ranks[0]) == len(ranks[1]) == n >= 3
    batches = [list(rk.epoch(1)) for rk in ranks]
    assert [len(x) for x in batches] == [n, n] and all(len(y) == 2 for bs in batches for _, y in bs)
    assert len(list(ranks[0].epoch(1, start=1))) == n - 1
    # the same epoch twice: the same samples in the same order (seeded shards and buffer)
    again = list(ranks[0].epoch(1))
    assert all(
        torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(batches[0], again)
    )


def test_stream_trains_and_inspects(data, tmp_path):
    _, _, shards = data
    args = [*wds_args(shards), "data.stream=true", "data.shuffle_buffer=10"]
    r = run_cli(["stage=train", *args, *FAST], tmp_path / "train")
    assert r.code == 0, r.out
    rows = metric_rows(r.run_dir)
    assert len(rows) >= 2 and all(
        np.isfinite(float(x["train_loss"])) for x in rows if x["train_loss"]
    )
    s = r.json("summary.json")
    assert s["data"]["kind"] == "wds"
    i = run_cli(
        [
            "stage=inspect",
            *args,
            "data.sample_size=5",
            "trainer.progress=false",
            "data.num_workers=0",
        ],
        tmp_path / "inspect",
    )
    assert i.code in (0, 1), i.out
    assert_contract(i.run_dir)
    si = i.json("summary.json")
    assert si["images"] == 10  # 5 of 24 train, 5 of 9 val
    assert any("checked on a sample of 10 of 33" in n for n in si["notes"]), si["notes"]


def test_stream_skips_an_undecodable_image_naming_it(tmp_path):
    import torch

    from runner.sources import bundle
    from runner.sources import wds as source

    members = []
    for k in range(6):
        members += [
            (f"{k}.png", b"not a png" if k == 2 else _png()),
            (f"{k}.cls", str(k % 2).encode()),
        ]
    _bad(tmp_path, "x.tar", members)
    cfg = compose(["data=wds", f"data.shards.train={tmp_path}/x.tar", "data.stream=true"]).data
    rec = source.records(cfg, tmp_path)
    rec.split[:] = 0
    rec.split[[4, 5]] = 1  # val: the last two
    b = bundle(rec, cfg)
    ys = [y for _, y in b.train.loader(8, False, 0, torch.device("cpu"), train=False).epoch(0)]
    assert sum(len(y) for y in ys) == 3 and list(b.train.unreadable) == ["x.tar:2"]
