"""data=hf: a Hugging Face dataset on disk: a folder written by `save_to_disk` (a DatasetDict
or one Dataset), or a local image folder as `datasets` reads one (class folders, or images
and a metadata.csv). Never the network: the Hub is switched off before `datasets` is imported.

    ds.save_to_disk("data/pets")          # python -m runner data=hf data.root=data/pets

The image column is read undecoded (its bytes, or the file it names); labels are class names
(a ClassLabel's names, or the values as written) ordered as an image folder orders its
classes, so the same images as a folder give the same class indices and fingerprint."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from runner.errors import ConfigError
from runner.sources import SPLIT_NAMES, SPLITS, Records, label_index

# runner split -> the dataset split names looked for when data.splits is empty, in order
BY_NAME = {0: ("train", "training"), 1: ("validation", "valid", "val", "dev"), 2: ("test",)}
DEFAULT_GROUP = "group"
SHOWN = 5
INSTALL = "pip install 'recipe-runner[hf]'"
log = logging.getLogger("runner")


def _datasets():
    """The `datasets` package, offline (an optional extra: imported here only)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"data=hf needs the Hugging Face `datasets` package, which is not installed: {INSTALL}"
        ) from None
    return datasets


class HFImages:
    """Image bytes of dataset rows: `where` = (split name, row). Holds the datasets (image column
    only, undecoded) and is picklable, so DataLoader workers get their own copy (a saved
    dataset is memory-mapped from its folder; a loaded image folder is held in memory)."""

    def __init__(self, tables: Dict[str, Any], column: str, root: str):
        self.tables, self.column, self.root = tables, column, root

    def __call__(self, where: Tuple[str, int]) -> bytes:
        split, row = where
        value = self.tables[split][int(row)][self.column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        if not value:
            raise OSError(f"data=hf: {split} row {row} has no image (neither bytes nor a path)")
        path = Path(value)
        if not path.is_absolute():
            path = Path(self.root) / path
        with open(path, "rb") as f:
            return f.read()


def _load(ds_mod, root: Path, given: str):
    """(DatasetDict-like {name: Dataset}, what it is) of data.root."""
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        try:
            loaded = ds_mod.load_from_disk(str(root), keep_in_memory=False)
        except Exception as e:  # noqa: BLE001 -- a damaged save is the user's input, named
            raise ConfigError(
                f"data.root={given!r} ({root}): cannot be loaded by datasets.load_from_disk: "
                f"{type(e).__name__}: {e}"
            ) from None
        if isinstance(loaded, ds_mod.Dataset):
            return {"train": loaded}, "a saved Dataset"
        return dict(loaded), "a saved DatasetDict"
    import tempfile

    # datasets' "Generating train split" bars off while it reads (the runner logs its own)
    was_on = not ds_mod.are_progress_bars_disabled()
    ds_mod.disable_progress_bars()
    try:
        # the cache is a temp folder, the tables kept in memory (they hold paths, not pixels)
        with tempfile.TemporaryDirectory(prefix="runner-hf-") as cache:
            loaded = ds_mod.load_dataset(
                "imagefolder", data_dir=str(root), cache_dir=cache, keep_in_memory=True
            )
    except Exception as e:  # noqa: BLE001 -- not a dataset: said as such, with datasets' reason
        raise ConfigError(
            f"data.root={given!r} ({root}) is not a Hugging Face dataset: no dataset_dict.json or "
            "state.json (a folder written by save_to_disk), and datasets cannot read it as an "
            f"image folder (class folders, or images + metadata.csv): {type(e).__name__}: {e}"
        ) from None
    finally:
        if was_on:
            ds_mod.enable_progress_bars()
    return dict(loaded), "an image folder"


def _pick_splits(cfg, present: List[str], what: str) -> Tuple[Dict[int, str], List[str]]:
    """{runner split: dataset split} and the notes on dataset splits left out."""
    given = dict(cfg.get("splits") or {})
    problems: List[str] = []
    chosen: Dict[int, str] = {}
    if given:
        for key, name in given.items():
            s = SPLIT_NAMES.get(str(key).strip().lower())
            if s is None:
                problems.append(
                    f"data.splits: {key!r} is not a runner split; expected train, val or test "
                    "(+data.splits.val=validation)"
                )
            elif str(name) not in present:
                problems.append(
                    f"data.splits.{key}={str(name)!r}: the dataset has no such split; its "
                    f"splits: {present}"
                )
            elif s in chosen:
                problems.append(f"data.splits: two entries for {SPLITS[s]}")
            else:
                chosen[s] = str(name)
        if not problems and 0 not in chosen:
            problems.append(
                f"data.splits={given} names no train split; add +data.splits.train=<one of "
                f"{present}>"
            )
    else:
        for s, names in BY_NAME.items():
            hit = next((n for n in names if n in present), None)
            if hit is not None:
                chosen[s] = hit
        if 0 not in chosen:
            problems.append(
                f"data.root: {what} has no train split (its splits: {present}); name it with "
                "+data.splits.train=<split>"
            )
    if problems:
        raise ConfigError(problems)
    notes = []
    unused = [n for n in present if n not in chosen.values()]
    if unused:
        notes.append(
            f"data=hf: dataset split(s) {unused} not used (data.splits maps train/val/test to "
            "the dataset's splits)"
        )
    return chosen, notes


def _label_values(feature, values: List[Any], column: str, split: str) -> List[str]:
    """A label column's values as class names (str); raises on a column of another type."""
    from datasets import ClassLabel, Value

    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        # -1: ClassLabel's "no label" (a test split published without its labels)
        bad = [k for k, v in enumerate(values) if v is None or not 0 <= v < len(names)]
        if bad:
            raise ConfigError(
                f"data.label_column={column!r}: {len(bad)} of the {len(values)} rows of the "
                f"{split} split have no label (ClassLabel -1 or none), e.g. rows {bad[:SHOWN]}; "
                "leave that split out with data.splits, e.g. +data.splits={train:train,"
                "val:validation}"
            )
        return [names[v] for v in values]
    dtype = getattr(feature, "dtype", "") if isinstance(feature, Value) else ""
    if dtype.startswith(("int", "uint")) or dtype in ("string", "large_string"):
        return ["" if v is None else str(v) for v in values]
    raise ConfigError(
        f"data.label_column={column!r}: the {split} split's column is {feature}; expected a "
        "ClassLabel, an integer or a string column (class indices or names)"
    )


def _column(ds, name: str):
    """One column as a pyarrow ChunkedArray (no decoding; a memory-mapped table is not copied)."""
    return ds.with_format("arrow")[name]


def _paths(ds, column: str, feature) -> List[Optional[str]]:
    """The file path of each row's image (None where only bytes are held), bytes left unread."""
    arr = _column(ds, column)
    chunks = arr.chunks if hasattr(arr, "chunks") else [arr]
    out: List[Optional[str]] = []
    for c in chunks:
        if hasattr(c, "field"):  # an Image feature: struct<bytes, path>
            out.extend(c.field("path").to_pylist())
        else:
            out.extend(c.to_pylist())
    return out


def _names(paths: List[Optional[str]]) -> List[str]:
    """What evidence calls each row of a split: its file's name, or #row when it has none; a
    name that two rows share (cat/0.png, dog/0.png) with its folder's, else with #row."""
    from collections import Counter

    def short(p, parts):
        return "/".join(Path(p).parts[-parts:]) if p else ""

    one, two = [short(p, 1) for p in paths], [short(p, 2) for p in paths]
    n1, n2 = Counter(one), Counter(two)
    out = []
    for k, (a, b) in enumerate(zip(one, two)):
        if not a:
            out.append(f"#{k}")
        elif n1[a] == 1:
            out.append(a)
        elif n2[b] == 1:
            out.append(b)
        else:
            out.append(f"{a}#{k}")
    return out


def records(cfg, base: Path) -> Records:
    if not cfg.get("root"):
        raise ConfigError(
            "data.root is not set; expected a folder written by save_to_disk or an image folder"
        )
    root = (Path(base) / str(cfg.root)).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"data.root={str(cfg.root)!r} is not a folder (looked in {root}); expected a folder "
            "written by datasets' save_to_disk, or an image folder"
        )
    ds_mod = _datasets()
    tables, what = _load(ds_mod, root, str(cfg.root))
    present = list(tables)
    chosen, notes = _pick_splits(cfg, present, what)
    for note in notes:
        log.info("data: %s", note)
    image_col = str(cfg.image_column)
    label_col = str(cfg.label_column)
    group_col = str(cfg.get("group_column") or DEFAULT_GROUP)
    problems: List[str] = []
    for name in chosen.values():
        ds = tables[name]
        cols = list(ds.column_names)
        for key, col in (("image_column", image_col), ("label_column", label_col)):
            if col not in cols:
                problems.append(
                    f"data.{key}={col!r}: the {name} split of {root} has no such column; its "
                    f"columns: {cols}"
                )
        if group_col != DEFAULT_GROUP and group_col not in cols:
            problems.append(
                f"data.group_column={group_col!r}: the {name} split of {root} has no such "
                f"column; its columns: {cols}"
            )
        if image_col in cols:
            feat = ds.features[image_col]
            is_path = getattr(feat, "dtype", "") in ("string", "large_string")
            if not isinstance(feat, ds_mod.Image) and not is_path:
                problems.append(
                    f"data.image_column={image_col!r}: the {name} split's column is {feat}; "
                    "expected an Image column (or a string column of file paths)"
                )
        if len(ds) == 0:
            problems.append(f"data.root: the {name} split of {root} has no rows")
    if problems:
        raise ConfigError(problems)

    has_group = any(group_col in tables[n].column_names for n in chosen.values())
    readers: Dict[str, Any] = {}
    labels: List[str] = []
    split: List[int] = []
    groups: List[str] = []
    names: List[str] = []
    where: List[Tuple[str, int]] = []
    for s in sorted(chosen):
        name = chosen[s]
        ds = tables[name]
        feat = ds.features[image_col]
        if isinstance(feat, ds_mod.Image):
            ds = ds.cast_column(image_col, ds_mod.Image(decode=False))
        paths = _paths(ds, image_col, feat)
        values = _column(ds, label_col).to_pylist()
        labels.extend(_label_values(ds.features[label_col], values, label_col, name))
        if has_group:
            if group_col in ds.column_names:
                g = _column(ds, group_col).to_pylist()
            else:
                g = [None] * len(ds)
            groups.extend(
                str(v).strip() if v not in (None, "") else f"row:{name}#{k}"
                for k, v in enumerate(g)
            )
        n = len(ds)
        split.extend([s] * n)
        where.extend((name, k) for k in range(n))
        names.extend(f"{name}/{n}" for n in _names(paths))
        readers[name] = ds.select_columns([image_col])
    idx, class_names = label_index(
        labels,
        lambda k: f"data.label_column={label_col!r}: {where[k][0]} row {where[k][1]}",
    )
    return Records(
        "hf",
        class_names,
        idx,
        np.array(split, np.int8),
        names,
        where,
        read=HFImages(readers, image_col, str(root)),
        group=np.array(groups, dtype=object) if has_group else None,
        notes=notes,
        source=f"data.root={str(cfg.root)!r} ({what})",
    )
