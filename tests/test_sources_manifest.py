"""data=manifest: images named by labels files (CSV, TSV, JSON, JSON lines) with split and
group columns; the same images as a folder give the same data and the same training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, assert_contract, compose, metric_rows
from PIL import Image

from runner.data import build_data
from runner.errors import ConfigError
from runner.sources import assign_splits, group_overlap
from runner.sources import manifest as mf

TINY = [x for x in FAST if x != "data=synthetic"] + ["model=tiny_cnn", "data.image_size=16"]


def write_folder(root: Path, classes=("cat", "dog", "eel"), per_class=8, n_val=3) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png; each class has its own bright
    stripe (learnable in a few steps)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        for split, n in (("train", per_class), ("val", n_val)):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                a = (rng.random((16, 16, 3)) * 80).astype(np.uint8)
                a[c * 5 : c * 5 + 4, :, c % 3] = 250
                Image.fromarray(a).save(d / f"{name}_{k}.png")
    return root


def write_csv(path: Path, rows, columns=("path", "label", "split")) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})
    return path


def folder_rows(root: Path):
    """The folder's images in the order its data kind reads them (train, then val)."""
    cfg = compose(["data=imagefolder", f"data.root={root}", "data.image_size=16"]).data
    data = build_data(cfg)
    return [
        {
            "path": str(Path(sp.name(i)).relative_to(root)),
            "label": Path(sp.name(i)).parent.name,
            "split": name,
        }
        for name, sp in (("train", data.train), ("val", data.val))
        for i in range(len(sp))
    ], data


def test_manifest_matches_the_folder_it_lists(tmp_path, cli):
    root = write_folder(tmp_path / "imgs")
    rows, folder = folder_rows(root)
    labels = write_csv(root / "labels.csv", rows)
    data = build_data(compose(["data=manifest", f"data.files={labels}", "data.image_size=16"]).data)
    assert (len(data.train), len(data.val)) == (len(folder.train), len(folder.val)) == (24, 9)
    assert data.class_names == folder.class_names == ["cat", "dog", "eel"]
    assert data.fingerprint == folder.fingerprint
    assert data.train.labels.tolist() == folder.train.labels.tolist()
    assert data.train.name(0) == rows[0]["path"]  # evidence names are relative to the file
    # the same seeded training, step for step
    a = cli(["stage=train", "data=imagefolder", f"data.root={root}", *TINY])
    b = cli(["stage=train", "data=manifest", f"data.files={labels}", *TINY])
    assert a.code == 0 and b.code == 0, a.out + b.out
    assert metric_rows(a.run_dir) == metric_rows(b.run_dir)
    assert b.json("summary.json")["data"]["kind"] == "manifest"
    assert_contract(b.run_dir)
    # the fingerprint follows the bytes: one changed image changes it
    img = root / rows[0]["path"]
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    again = build_data(compose(["data=manifest", f"data.files={labels}"]).data)
    assert again.fingerprint != data.fingerprint


def test_json_files_index_labels_and_carved_splits(tmp_path):
    root = write_folder(tmp_path / "imgs", per_class=10, n_val=0)
    rows, _ = folder_rows_flat(root)
    # labels as indices, in two files (JSON and JSON lines) with paths relative to each
    (root / "a.json").write_text(json.dumps({"images": rows[:15]}))
    (root / "train" / "b.jsonl").write_text(
        "\n".join(
            json.dumps({**r, "path": str(Path(r["path"]).relative_to("train"))}) for r in rows[15:]
        )
    )
    cfg = compose(
        [
            "data=manifest",
            f"data.files=[{root / 'a.json'},{root / 'train' / 'b.jsonl'}]",
            "data.val_fraction=0.2",
            "data.test_fraction=0.2",
        ]
    ).data
    data = build_data(cfg)
    assert data.class_names == ["0", "1", "2"]
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)
    for sp in (data.train, data.val, data.test):  # stratified: every class in every split
        assert sorted(set(sp.labels.tolist())) == [0, 1, 2]


def folder_rows_flat(root: Path):
    rows = [
        {"path": str(p.relative_to(root)), "label": str(["cat", "dog", "eel"].index(p.parent.name))}
        for p in sorted((root / "train").glob("*/*.png"))
    ]
    return rows, None


def grouped(root: Path, n_groups=6, split=None):
    """Rows of the folder's train images with a patient column (patient = image index % n)."""
    rows = []
    for p in sorted((root / "train").glob("*/*.png")):
        k = int(p.stem.split("_")[1])
        rows.append(
            {
                "path": str(p.relative_to(root)),
                "label": p.parent.name,
                "patient": f"p{k % n_groups}",
                "split": split(k) if split else "",
            }
        )
    return rows


def test_group_column_keeps_every_group_in_one_split(tmp_path):
    root = write_folder(tmp_path / "imgs", per_class=12, n_val=0)
    f = write_csv(root / "g.csv", grouped(root), ("path", "label", "patient"))
    for seed in range(4):
        cfg = compose(
            [
                "data=manifest",
                f"data.files={f}",
                "data.group_column=patient",
                "data.val_fraction=0.25",
                "data.test_fraction=0.2",
                f"data.split_seed={seed}",
            ]
        ).data
        rec = mf.records(cfg, Path("."))
        split = assign_splits(rec, 0.25, 0.2, seed)
        assert group_overlap(split, rec.group) == {}
        assert set(np.unique(split)) == {0, 1, 2}
        for s in (1, 2):  # every class is in val and test
            assert sorted(set(rec.labels[split == s].tolist())) == [0, 1, 2]
    data = build_data(cfg)
    names = {
        s: {data.splits()[s].name(i) for i in range(len(data.splits()[s]))}
        for s in ("train", "val", "test")
    }
    assert not (names["train"] & names["val"]) and not (names["val"] & names["test"])


def test_inspect_fails_a_user_split_that_breaks_groups(tmp_path, cli):
    root = write_folder(tmp_path / "imgs", per_class=12, n_val=0)
    # the user's own split column, made by image: patients end up on both sides
    bad = write_csv(
        root / "bad.csv",
        grouped(root, split=lambda k: "val" if k % 4 == 0 else "train"),
        ("path", "label", "split", "patient"),
    )
    # made by patient: clean
    good = write_csv(
        root / "good.csv",
        grouped(root, n_groups=4, split=lambda k: "val" if k % 4 == 0 else "train"),
        ("path", "label", "split", "patient"),
    )
    base = ["stage=inspect", "data=manifest", "data.group_column=patient", *TINY]
    r = cli([*base, f"data.files={bad}"])
    checks = {c["name"]: c for c in r.json("checks.json")}
    leak = checks["data.leakage"]
    assert leak["status"] == "fail" and "group" in leak["message"], leak
    assert leak["details"]["group_counts"]["train-val"] == 3  # p0, p2, p4 (and not p1, p3, p5)
    assert_contract(r.run_dir)
    r2 = cli([*base, f"data.files={good}"])
    checks = {c["name"]: c for c in r2.json("checks.json")}
    assert checks["data.leakage"]["status"] == "pass", checks["data.leakage"]
    # training on the broken split says so, and records it
    t = cli(
        [
            "stage=train",
            "data=manifest",
            "data.group_column=patient",
            f"data.files={bad}",
            *TINY,
            "trainer.epochs=1",
        ]
    )
    assert t.code == 0, t.out
    assert "3 group(s) in both train and val" in t.out


@pytest.mark.parametrize(
    "rows, extra, expect",
    [
        ([{"path": "nope.png", "label": "cat"}], [], "do not exist"),
        ([{"path": "train/cat/cat_0.png", "label": "cat", "split": "holdout"}], [], "holdout"),
        ([{"path": "train/cat/cat_0.png", "label": ""}], [], "empty label"),
        ([{"path": "train/cat/cat_0.png", "label": "cat"}] * 2, [], "also listed"),
        (
            [{"path": "train/cat/cat_0.png", "label": "cat"}],
            ["data.label_column=class"],
            "data.label_column='class'",
        ),
        (
            [{"path": "train/cat/cat_0.png", "label": "cat"}],
            ["data.group_column=patient"],
            "data.group_column='patient'",
        ),
    ],
)
def test_bad_rows_are_config_errors_naming_row_and_column(tmp_path, rows, extra, expect):
    root = write_folder(tmp_path / "imgs", per_class=2, n_val=0)
    f = write_csv(root / "x.csv", rows)
    with pytest.raises(ConfigError) as e:
        build_data(compose(["data=manifest", f"data.files={f}", *extra]).data)
    assert expect in str(e.value)
    if "exist" in expect or "holdout" in expect or "listed" in expect:
        assert f"{f} line 2" in str(e.value)  # the row, as the file's line


def test_impossible_splits_exit_2(tmp_path, cli):
    root = write_folder(tmp_path / "imgs", per_class=6, n_val=0)
    rows = [
        {"path": f"train/{c}/{c}_{k}.png", "label": c, "split": "train"}
        for c in ("cat", "dog")
        for k in range(6)
    ]
    rows.append({"path": "train/eel/eel_0.png", "label": "eel", "split": "val"})
    unseen = write_csv(root / "unseen.csv", rows)
    r = cli(["stage=train", "data=manifest", f"data.files={unseen}", *TINY])
    assert r.code == 2 and "classes no train image has: ['eel']" in r.out, r.out
    # eel's images all in one patient: a split by group cannot give val an eel
    g = grouped(root)
    for row in g:
        if row["label"] == "eel":
            row["patient"] = "p-eel"
    one = write_csv(root / "one.csv", g, ("path", "label", "patient"))
    r = cli(
        ["stage=train", "data=manifest", f"data.files={one}", "data.group_column=patient", *TINY]
    )
    assert r.code == 2 and "no val image is of class(es) ['eel']" in r.out, r.out
    r = cli(["stage=train", "data=manifest", f"data.files={root / 'none.csv'}", *TINY])
    assert r.code == 2 and "none.csv" in r.out and not r.run_dirs
