"""data=hf: a Hugging Face dataset on disk (save_to_disk, or a local image folder) as a records
kind. The same images as an image folder and as a saved DatasetDict must be the same data:
counts, class names, fingerprint and the training curves of a seeded run."""

from __future__ import annotations

import io
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, assert_contract, compose, metric_rows, run_cli
from PIL import Image

# never the network, also for the datasets calls the tests make themselves (read at import)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
datasets = pytest.importorskip("datasets")

SIZE = 16
# written in another order than an image folder sorts them (natural sort: c1, c2, c10)
CLASSES = ["c10", "c2", "c1"]
FIT = FAST + ["model=tiny_cnn", "data.image_size=16", "seed=0", "trainer.batch_size=8"]


def png(cls: int, i: int) -> bytes:
    """A 16 px PNG: a bright square at a class's place, on seeded noise."""
    rng = np.random.default_rng(100 * cls + i)
    a = rng.integers(0, 90, (SIZE, SIZE, 3), dtype=np.uint8)
    y, x = divmod(cls * 5, SIZE - 4)
    a[y : y + 5, x : x + 5] = 230
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


def write_folder(root: Path, per_split=(("train", 6), ("val", 3))) -> Path:
    for split, n in per_split:
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{split}{i}.png").write_bytes(png(c, i + (100 if split == "val" else 0)))
    return root


def save_like_folder(folder: Path, out: Path) -> Path:
    """The folder's images as a saved DatasetDict (train + validation, a ClassLabel), rows in
    the order of the folder's samples, the image bytes held in the dataset."""
    from timm.data import ImageDataset

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}
    )
    parts = {}
    for split, name in (("train", "train"), ("val", "validation")):
        samples = ImageDataset(str(folder / split)).reader.samples
        rows = {"image": [], "label": []}
        for path, _ in samples:
            p = Path(path)
            rows["image"].append({"bytes": p.read_bytes(), "path": p.name})
            rows["label"].append(CLASSES.index(p.parent.name))
        parts[name] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def same_images(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    folder = write_folder(base / "folder")
    return folder, save_like_folder(folder, base / "saved")


def test_saved_dataset_is_the_same_data_as_the_folder(same_images, tmp_path):
    from runner.data import build_data

    folder, saved = same_images
    a = build_data(compose(["data=imagefolder", f"data.root={folder}"]).data)
    b = build_data(compose(["data=hf", f"data.root={saved}"]).data)
    assert b.kind == "hf"
    assert b.class_names == a.class_names == ["c1", "c2", "c10"]
    assert (len(b.train), len(b.val)) == (len(a.train), len(a.val)) == (18, 9)
    assert b.fingerprint == a.fingerprint
    assert b.train.labels.tolist() == a.train.labels.tolist()

    runs = {}
    for kind, root in (("imagefolder", folder), ("hf", saved)):
        r = run_cli(FIT + ["stage=train", f"data={kind}", f"data.root={root}"], tmp_path / kind)
        assert r.code == 0, r.out
        assert r.json("summary.json")["data"]["fingerprint"] == a.fingerprint
        runs[kind] = metric_rows(r.run_dir)
    assert len(runs["hf"]) == 2
    assert runs["hf"] == runs["imagefolder"]


def test_class_folders_read_by_datasets_are_the_same_data(same_images):
    """The image folder itself as data=hf (datasets' imagefolder: val/ is its validation split):
    the same classes and fingerprint; names that two class folders share keep their folder."""
    from runner.data import build_data
    from runner.sources.hf import records

    folder, _ = same_images
    a = build_data(compose(["data=imagefolder", f"data.root={folder}"]).data)
    cfg = compose(["data=hf", f"data.root={folder}"]).data
    b = build_data(cfg)
    assert b.class_names == a.class_names and b.fingerprint == a.fingerprint
    rec = records(cfg, folder)
    assert len(set(rec.names)) == len(rec) == 27
    assert "train/c10/train0.png" in rec.names and "validation/c2/val1.png" in rec.names


def test_imagefolder_with_metadata_csv(tmp_path):
    from runner.sources import assign_splits
    from runner.sources.hf import records

    root = tmp_path / "meta"
    root.mkdir()
    lines = ["file_name,kind,patient"]
    for i in range(12):
        c = i % 2
        (root / f"{i}.png").write_bytes(png(c, i))
        lines.append(f"{i}.png,{'dog' if c else 'cat'},p{i // 2}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    cfg = compose(
        ["data=hf", f"data.root={root}", "data.label_column=kind", "data.group_column=patient"]
    ).data
    rec = records(cfg, tmp_path)
    assert rec.class_names == ["cat", "dog"] and len(rec) == 12
    assert sorted(rec.names)[:2] == ["train/0.png", "train/1.png"]
    assert rec.raw(0)[:4] == b"\x89PNG"
    # DataLoader workers get their own copy (the tables in memory: the cache folder is gone)
    assert pickle.loads(pickle.dumps(rec.read))(rec.where[5]) == rec.raw(5)
    split = assign_splits(rec, 0.34, 0.0, 0)
    assert (split == 1).any()
    # patients p0..p5 each hold one cat and one dog; none is in both splits
    assert not set(rec.group[split == 0]) & set(rec.group[split == 1])


def test_group_column_carves_val_by_group(tmp_path):
    """A single saved Dataset is all train; its `group` column (the default name) makes the
    carved val split whole groups."""
    from runner.data import build_data
    from runner.sources import assign_splits
    from runner.sources.hf import records

    n = 40
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": png(i % 2, i), "path": None} for i in range(n)],
            "label": ["b" if i % 2 else "a" for i in range(n)],
            "group": [f"g{i // 4}" for i in range(n)],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.Value("string"),
                "group": datasets.Value("string"),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "one"))
    cfg = compose(["data=hf", "data.root=one", "data.val_fraction=0.3"]).data
    rec = records(cfg, tmp_path)
    assert rec.group is not None and set(rec.split.tolist()) == {0}
    assert rec.names[3] == "train/#3"
    split = assign_splits(rec, 0.3, 0.0, 0)
    val, train = set(rec.group[split == 1]), set(rec.group[split == 0])
    assert val and train and not val & train
    data = build_data(cfg, str(tmp_path))
    assert len(data.train) + len(data.val) == n and len(data.val) == int((split == 1).sum())


def test_inspect_on_a_saved_dataset(same_images, tmp_path):
    _, saved = same_images
    r = run_cli(FIT + ["stage=inspect", "data=hf", f"data.root={saved}"], tmp_path)
    assert r.code in (0, 1), r.out
    assert "Traceback" not in r.out
    names = {c["name"] for c in r.json("checks.json")}
    assert "data.corrupt" in names
    assert_contract(r.run_dir)


@pytest.mark.parametrize(
    "args, said",
    [
        (
            ["data.label_column=nope"],
            ["data.label_column='nope'", "its columns: ['image', 'label']"],
        ),
        (
            ["+data.splits={train:train,val:nosuch}"],
            ["data.splits.val='nosuch'", "its splits: ['train', 'validation']"],
        ),
        (["data.group_column=patient"], ["data.group_column='patient'"]),
        (["data.root=notes"], ["data.root='notes' (", "is not a Hugging Face dataset"]),
        (["data.root=nowhere"], ["data.root='nowhere' is not a folder"]),
    ],
)
def test_bad_inputs_exit_2_naming_them(same_images, tmp_path, args, said):
    _, saved = same_images
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    r = run_cli(FIT + ["stage=train", "data=hf", f"data.root={saved}", *args], tmp_path)
    assert r.code == 2, r.out
    for s in said:
        assert s in r.out, r.out
    assert "Traceback" not in r.out


def test_label_column_of_another_type_is_refused(tmp_path):
    from runner.errors import ConfigError
    from runner.sources.hf import records

    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(0, i), "path": None} for i in range(4)], "label": [0.5] * 4},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("float32")}),
    )
    ds.save_to_disk(str(tmp_path / "f"))
    with pytest.raises(ConfigError, match="data.label_column='label'.*float32"):
        records(compose(["data=hf", "data.root=f"]).data, tmp_path)

    # a split published without labels (ClassLabel -1), found by name: refused, said how to skip
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    rows = {"image": [{"bytes": png(i % 2, i), "path": None} for i in range(4)]}
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict({**rows, "label": [0, 1, 0, 1]}, features=features),
        test=datasets.Dataset.from_dict({**rows, "label": [-1] * 4}, features=features),
    ).save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(
        ConfigError, match=r"4 of the 4 rows of the test split have no label.*data\.splits"
    ):
        records(compose(["data=hf", "data.root=unlabelled"]).data, tmp_path)
    rec = records(
        compose(["data=hf", "data.root=unlabelled", "+data.splits={train:train}"]).data, tmp_path
    )
    assert rec.class_names == ["a", "b"] and len(rec) == 4


def test_splits_by_name_or_by_data_splits(tmp_path):
    from runner.sources.hf import records

    def part(n, c0=0):
        return datasets.Dataset.from_dict(
            {
                "image": [{"bytes": png((c0 + i) % 2, i), "path": f"{i}.png"} for i in range(n)],
                "label": [(c0 + i) % 2 for i in range(n)],
            },
            features=datasets.Features(
                {"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])}
            ),
        )

    datasets.DatasetDict(train=part(6), dev=part(4), extra=part(2), test=part(2)).save_to_disk(
        str(tmp_path / "dd")
    )
    rec = records(compose(["data=hf", "data.root=dd"]).data, tmp_path)
    assert np.bincount(rec.split).tolist() == [6, 4, 2]
    assert any("['extra'] not used" in n for n in rec.notes)
    assert rec.names[6] == "dev/0.png" and rec.where[6] == ("dev", 0)
    rec = records(
        compose(["data=hf", "data.root=dd", "+data.splits={train:train,val:extra}"]).data, tmp_path
    )
    assert np.bincount(rec.split).tolist() == [6, 2]
    assert rec.raw(7) == png(1, 1)


def test_without_datasets_installed_the_message_says_how(monkeypatch, same_images, tmp_path):
    from runner.errors import ConfigError
    from runner.sources.hf import records

    _, saved = same_images
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'recipe-runner\[hf\]'"):
        records(compose(["data=hf", f"data.root={saved}"]).data, tmp_path)
