"""Data kinds made of image records: a labels file (manifest), a Hugging Face dataset on disk,
WebDataset shards. Each kind's module turns its input into one `Records` table (where each
image's bytes are, its label, split and group); everything after that is shared here: the
splits (carved by class, or by group when there are groups), the content fingerprint, the
training splits (`bundle`) and what stage=inspect reads (`runner.stages.inspect`).

A new kind of this sort is one `records(cfg, base) -> Records` function and one line in
runner/data.py DATA_KINDS (`records_kind`)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from runner.errors import ConfigError

log = logging.getLogger("runner")

SPLITS = ("train", "val", "test")
# a split column's values, as users write them
SPLIT_NAMES = {
    "train": 0,
    "training": 0,
    "val": 1,
    "valid": 1,
    "validation": 1,
    "dev": 1,
    "test": 2,
    "testing": 2,
}
CARVE = -1  # a record whose split the fractions decide


@dataclass
class Records:
    """Every image of a data source, as columns.

    `where[i]` says how to read image i: a file path (str), or something the kind's `read`
    turns into the file's bytes. `split` holds 0/1/2 (train/val/test) or CARVE; `group` the
    group of each image (None: no groups). `names` are what evidence shows (a path relative to
    the manifest, shard:key, split/#row)."""

    kind: str
    class_names: List[str]
    labels: np.ndarray
    split: np.ndarray
    names: List[str]
    where: Sequence
    read: Optional[Callable] = None
    group: Optional[np.ndarray] = None
    notes: List[str] = field(default_factory=list)
    # what a message calls this source: "data.files=['labels.csv']"
    source: str = ""
    # the folder `names` are relative to, when they are paths
    root: Optional[str] = None
    # a kind whose train split is streamed (data=wds data.stream=true: runner.sources.wds
    # Streamed): it makes that split and the fingerprint without reading every image, and
    # names the sample stage=inspect reads
    stream: Optional[object] = None

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> bytes:
        """Image i's encoded bytes."""
        w = self.where[i]
        if self.read is not None:
            return self.read(w)
        with open(w, "rb") as f:
            return f.read()

    def open(self, i: int, max_pixels: int = 0, max_bytes: int = 0):
        """Image i opened by PIL (header read, nothing decoded), within the decoding limits."""
        from runner.data import open_image

        w = self.where[i]
        if self.read is None:
            return open_image(w, max_pixels, max_bytes)
        return open_image(io.BytesIO(self.read(w)), max_pixels, max_bytes)


# ----------------------------------------------------------------------------- splits
def group_split(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """(rest, carved) indices: whole groups carved until each class has about `fraction` of
    its images in the carved part (a group counts for its most common class), seeded. No group
    is in both parts."""
    rng = np.random.default_rng(seed)
    names, gid = np.unique(groups.astype(str), return_inverse=True)
    n_cls = int(labels.max()) + 1 if len(labels) else 0
    counts = np.zeros((len(names), n_cls), np.int64)
    np.add.at(counts, (gid, labels), 1)
    major = counts.argmax(1)
    target = fraction * counts.sum(0)
    have = np.zeros(n_cls)
    take = np.zeros(len(names), bool)
    for g in rng.permutation(len(names)):
        c = major[g]
        # a class held by a single group stays in the rest: training needs it
        if (counts[:, c] > 0).sum() < 2:
            continue
        if have[c] + counts[g, c] / 2 <= target[c]:
            take[g] = True
            have += counts[g]
    carved = np.flatnonzero(take[gid])
    rest = np.flatnonzero(~take[gid])
    return rest, carved


def assign_splits(
    rec: Records, val_fraction: float, test_fraction: float, split_seed: int
) -> np.ndarray:
    """The final 0/1/2 split of every record: the given one, with val (when no record is val)
    and test (data.test_fraction) carved from the train records: by group when there are
    groups, else stratified by class (runner.data.split_indices)."""
    from runner.data import split_indices

    split = rec.split.copy()
    split[split == CARVE] = 0
    given = rec.split != CARVE
    has_val, has_test = bool((split[given] == 1).any()), bool((split[given] == 2).any())
    if has_test and test_fraction > 0:
        raise ConfigError(
            f"data.test_fraction={test_fraction:g} but {rec.source} has test rows; remove "
            "data.test_fraction (or the test rows)"
        )
    pool = np.flatnonzero(split == 0)
    labels = rec.labels[pool]
    if rec.group is None:
        tr, va, te = split_indices(
            labels, val_fraction, test_fraction, split_seed, carve_val=not has_val
        )
        split[pool[va]] = 1
        split[pool[te]] = 2
        return split
    groups = rec.group[pool]
    if not has_val:
        keep, va = group_split(labels, groups, val_fraction, split_seed)
        split[pool[va]] = 1
        pool, labels, groups = pool[keep], labels[keep], groups[keep]
    if test_fraction > 0 and len(pool):
        rel = min(0.99, test_fraction * len(rec) / len(pool))
        _, te = group_split(labels, groups, rel, split_seed + 1)
        split[pool[te]] = 2
    return split


def group_overlap(split: np.ndarray, group: Optional[np.ndarray]) -> Dict[str, List[str]]:
    """{"train-val": [groups in both], ...}: the groups a split puts in two splits."""
    if group is None:
        return {}
    out = {}
    g = group.astype(str)
    sets = [set(g[split == s]) for s in range(3)]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        both = sorted(str(x) for x in sets[a] & sets[b])
        if both:
            out[f"{SPLITS[a]}-{SPLITS[b]}"] = both
    return out


def split_problems(rec: Records, split: np.ndarray) -> List[str]:
    """Splits training cannot use: no train images, a val/test class training never sees, a
    class that no val image has (with a group split: named as such)."""
    p = []
    present = [set(rec.labels[split == s].tolist()) for s in range(3)]
    if not present[0]:
        p.append(f"{rec.source}: no train images")
        return p
    for s in (1, 2):
        extra = sorted(present[s] - present[0])
        if extra:
            p.append(
                f"{rec.source}: the {SPLITS[s]} split has classes no train image has: "
                f"{[rec.class_names[k] for k in extra]}"
            )
    if rec.group is not None and present[1]:
        missing = sorted(set(range(len(rec.class_names))) - present[1])
        if missing:
            names = [rec.class_names[k] for k in missing]
            p.append(
                f"{rec.source}: split by group, no val image is of class(es) {names} "
                "(every image of such a class is in one group, or too few groups): add "
                "groups of these classes, give the split in a split column, or raise "
                "data.val_fraction"
            )
    return p


# ----------------------------------------------------------------------------- fingerprint
_DIGESTS: Dict[tuple, str] = {}


def file_digest(path) -> str:
    """sha1 of a file's bytes (16 hex), cached in this process by path, size and mtime (a
    recipe builds its data many times)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"unreadable:{type(e).__name__}"
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha1()
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _DIGESTS[key] = h.hexdigest()[:16]
        except OSError as e:
            return f"unreadable:{type(e).__name__}"
    return _DIGESTS[key]


def digest(rec: Records, i: int) -> str:
    """sha1 of image i's bytes (16 hex)."""
    if rec.read is None:
        return file_digest(rec.where[i])
    try:
        return hashlib.sha1(rec.raw(i)).hexdigest()[:16]
    except OSError as e:
        return f"unreadable:{type(e).__name__}"


def content_fingerprint(
    split: np.ndarray, labels: np.ndarray, class_names: Sequence[str], digests: Sequence[str]
) -> str:
    """The data fingerprint of images known by their bytes: per split, the sorted (class name,
    content hash) pairs. The same images give the same fingerprint whatever holds them (a
    folder, a labels file, a saved Hugging Face dataset, tar shards) and in whatever order."""
    from runner.data import _fingerprint

    parts: List[str] = []
    for s in range(3):
        rows = np.flatnonzero(split == s)
        if not len(rows):
            continue
        parts.append(SPLITS[s])
        parts.extend(sorted(f"{class_names[labels[i]]}:{digests[i]}" for i in rows))
    return _fingerprint(*parts)


# ----------------------------------------------------------------------------- to training
class RecordImages:
    """Map-style (PIL image, label) of some records, decoded within the limits; an unreadable
    image raises, so the split's loader names and skips it (runner.data._Transformed)."""

    def __init__(self, rec: Records, idx: np.ndarray, mode: str, limits: Tuple[int, int]):
        self.rec, self.idx, self.mode, self.limits = rec, idx, mode, limits

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        j = int(self.idx[i])
        with self.rec.open(j, *self.limits) as im:
            return im.convert(self.mode), int(self.rec.labels[j])


def settle(rec: Records, cfg) -> Tuple[np.ndarray, str]:
    """(the final split of every record, the data fingerprint), `cfg` the data node: the
    splits assigned (assign_splits), refused when training cannot use them (split_problems),
    and fingerprinted (by content; a streamed kind by its own index)."""
    split = assign_splits(
        rec,
        float(cfg.val_fraction),
        float(cfg.get("test_fraction") or 0.0),
        int(cfg.split_seed),
    )
    problems = split_problems(rec, split)
    if problems:
        raise ConfigError(problems)
    if rec.stream is not None:
        return split, rec.stream.fingerprint(rec, split)
    digests = [digest(rec, i) for i in range(len(rec))]
    return split, content_fingerprint(split, rec.labels, rec.class_names, digests)


def bundle(rec: Records, cfg, norm=None):
    """The DataBundle of `rec`: splits assigned, checked, fingerprinted, streamed from the
    records with the configured transforms."""
    import torch

    from runner.data import (
        DataBundle,
        StreamSplit,
        _default_mean_std,
        eval_transform,
    )

    split, fp = settle(rec, cfg)
    notes = list(rec.notes)
    for pair, groups in group_overlap(split, rec.group).items():
        msg = (
            f"{rec.source}: {len(groups)} group(s) in both {pair.replace('-', ' and ')} "
            f"(e.g. {groups[:3]}): the model can learn the group, not the class "
            "(stage=inspect's data.leakage fails on it)"
        )
        log.warning("data: %s", msg)
        notes.append(msg)
    channels = int(cfg.channels)
    mode = "L" if channels == 1 else "RGB"
    limits = (int(cfg.get("max_image_pixels") or 0), int(cfg.get("max_image_bytes") or 0))
    mean, std, source = _default_mean_std(cfg, channels, norm)
    tf = eval_transform(cfg.image_size, mean, std, cfg.interpolation)

    def stream(s: int):
        idx = np.flatnonzero(split == s)
        if not len(idx):
            return None
        args = (
            RecordImages(rec, idx, mode, limits),
            torch.from_numpy(rec.labels[idx].astype(np.int64)),
            None,
            tf,
            mean,
            std,
            lambda i, t=idx: rec.names[int(t[i])],
            cfg.image_size,
            cfg.interpolation,
        )
        if s == 0 and rec.stream is not None:
            return rec.stream.train_split(rec, idx, mode, limits, *args)
        return StreamSplit(*args)

    if rec.stream is not None:
        notes.extend(rec.stream.notes(int((split == 0).sum())))
    return DataBundle(
        stream(0),
        stream(1),
        len(rec.class_names),
        channels,
        cfg.image_size,
        list(rec.class_names),
        tuple(mean),
        tuple(std),
        fp,
        rec.kind,
        notes=notes,
        norm_from=source,
        test=stream(2),
    )


def label_index(values: Sequence[str], where: Callable[[int], str]) -> Tuple[np.ndarray, List[str]]:
    """Labels as written (class names, or integer indices) -> (indices, class names). Names are
    ordered as timm orders class folders (natural sort); integers keep their own order."""
    from timm.utils.misc import natural_key

    vals = [str(v).strip() for v in values]
    empty = [k for k, v in enumerate(vals) if v == ""]
    if empty:
        raise ConfigError(
            [f"{where(k)}: empty label" for k in empty[:5]]
            + ([f"... and {len(empty) - 5} more rows without a label"] if len(empty) > 5 else [])
        )
    if all(_is_int(v) for v in vals):
        ints = sorted({int(v) for v in vals})
        names = [str(v) for v in ints]
        pos = {v: k for k, v in enumerate(ints)}
        return np.array([pos[int(v)] for v in vals], np.int64), names
    names = sorted(set(vals), key=natural_key)
    pos = {v: k for k, v in enumerate(names)}
    return np.array([pos[v] for v in vals], np.int64), names


def _is_int(v: str) -> bool:
    try:
        int(v)
        return True
    except ValueError:
        return False


def relative_name(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
