"""data=wds: WebDataset tar shards. A sample is the consecutive members of a shard that share
a key (the member's path up to the first dot of its base name, as webdataset groups them):
one image (jpg, jpeg, png, webp, bmp, ppm, pgm, tif, tiff) and its label (`cls`: a class
index or a class name as text; `cls.txt`, `label`, `label.txt` are read the same), and
optionally a `json` member whose `data.group_column` field ("group" by default) is the
sample's group (patient, session, camera: every split is then made by group).

    train-000.tar: 0001.png 0001.cls 0002.png 0002.cls ...

`data.shards` maps a split (train, val, test) to a shard path, a brace pattern
(`data/train-{000..009}.tar`) or a list of them, relative to where the run starts. Without a
val entry, val (and test, with data.test_fraction) is carved from train, as for a folder.

Indexed (data.stream=false, the default): each shard is read once with `tarfile` (member
headers, plus the small label and json members; no image is decoded or hashed there) and
every image is then read at random like a file, by (shard, offset, size): the same images as
an image folder, written in the folder's order, give the folder's classes, splits,
fingerprint and seeded training curves.

Streamed (data.stream=true): the same header pass, then the train split is read shard by
shard through webdataset (ShardStreamLoader); the fingerprint comes from the index and
stage=inspect reads a sample of data.sample_size per split (`Streamed`)."""

from __future__ import annotations

import json
import math
import os
import re
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from runner.data import StreamSplit
from runner.errors import ConfigError
from runner.sources import SPLIT_NAMES, Records, label_index

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff")
LABEL_EXTS = ("cls", "cls.txt", "label", "label.txt")
SHOWN = 5
# members webdataset skips (tariterators.tar_file_iterator): __key__ style metadata
_META = re.compile(r"__[^/]*__($|/)")


def read_member(where: Tuple[str, int, int]) -> bytes:
    """The bytes of one tar member: (shard path, offset of its data, size). Module-level, so
    a DataLoader worker can be handed it (pickled)."""
    path, offset, size = where
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(
            f"{path}: member at offset {offset} is cut short ({len(data)} of {size} bytes)"
        )
    return data


def base_plus_ext(name: str) -> Tuple[Optional[str], Optional[str]]:
    """(key, extension) of a member name, as webdataset splits it."""
    m = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (m.group(1), m.group(2)) if m else (None, None)


def shard_paths(spec: Any, base: Path, split: str) -> List[Path]:
    """The shard files of one `data.shards` entry (a path, a brace pattern or a list of
    them, relative to `base`); ConfigError naming a pattern or file that is not there."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec or [])
    if not specs:
        raise ConfigError(f"data.shards.{split} is empty; expected a tar path or brace pattern")
    out: List[Path] = []
    problems: List[str] = []
    for s in specs:
        s = str(s)
        if "://" in s or s.startswith("pipe:"):
            problems.append(
                f"data.shards.{split}: {s!r} is not a local file; shards are read from local "
                "paths (copy them to this machine)"
            )
            continue
        names = _expand(s)
        missing = [n for n in names if not (base / n).expanduser().is_file()]
        if missing:
            shown = ", ".join(str((base / n).expanduser()) for n in missing[:SHOWN])
            problems.append(
                f"data.shards.{split}={s!r}: {len(missing)} of {len(names)} shard(s) it names "
                f"are not files, e.g. {shown}"
            )
            continue
        out.extend((base / n).expanduser() for n in names)
    if problems:
        raise ConfigError(problems)
    return out


def _expand(pattern: str) -> List[str]:
    """A brace pattern's file names (`train-{000..009}.tar`), as webdataset expands them."""
    if "{" not in pattern:
        return [pattern]
    try:
        from braceexpand import braceexpand
    except ImportError:
        raise ConfigError(
            f"data.shards: {pattern!r} is a brace pattern, expanded by the braceexpand package "
            "(a dependency of webdataset): pip install 'recipe-runner[wds]'"
        ) from None
    return list(braceexpand(pattern))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").strip()


def index_shard(path: Path, group_field: str) -> Tuple[List[Dict[str, Any]], List[str]]:
    """The samples of one shard, in order: dicts of key, image (offset, size), label text and
    group (or None); and the problems found (a sample without an image or a label, a key whose
    members are not together). Image bytes are not read; label and json members are."""
    try:
        tar = tarfile.open(path, mode="r:")
    except (tarfile.ReadError, OSError) as e:
        raise ConfigError(
            f"data.shards: {path} is not an uncompressed tar file ({e}); a shard is a plain "
            "tar (webdataset.TarWriter, `tar cf`), not .tar.gz"
        ) from None
    samples: List[Dict[str, Any]] = []
    problems: List[str] = []
    seen: set = set()
    cur: Optional[Dict[str, Any]] = None
    shard = path.name
    with tar:
        members = 0
        for m in tar:
            if not m.isreg() or _META.match(m.name):
                continue
            key, ext = base_plus_ext(m.name)
            if key is None:
                continue
            members += 1
            ext = ext.lower()
            if cur is None or cur["key"] != key:
                if key in seen:
                    problems.append(
                        f"{path}: key {key!r} appears again after other samples (a sample's "
                        "members must be consecutive, as webdataset reads them)"
                    )
                seen.add(key)
                cur = {"key": key, "image": None, "label": None, "group": None, "exts": []}
                samples.append(cur)
            cur["exts"].append(ext)
            if ext in IMAGE_EXTS and cur["image"] is None:
                cur["image"] = (str(path), int(m.offset_data), int(m.size))
            elif ext in LABEL_EXTS and cur["label"] is None:
                cur["label"] = _text(tar.extractfile(m).read())
            elif ext == "json" and cur["group"] is None:
                try:
                    meta = json.loads(tar.extractfile(m).read())
                except ValueError as e:
                    problems.append(f"{shard}:{key}: its json member is not JSON ({e})")
                    continue
                if isinstance(meta, dict) and meta.get(group_field) not in (None, ""):
                    cur["group"] = str(meta[group_field]).strip()
        if not members:
            raise ConfigError(f"data.shards: {path} is empty (a tar without any file)")
    no_image = [s for s in samples if s["image"] is None]
    no_label = [s for s in samples if s["image"] is not None and s["label"] is None]
    for what, bad in (
        (f"no image member ({', '.join(IMAGE_EXTS)})", no_image),
        (f"no label member ({', '.join(LABEL_EXTS)})", no_label),
    ):
        if bad:
            shown = "; ".join(f"{shard}:{s['key']} has {s['exts']}" for s in bad[:SHOWN])
            problems.append(
                f"data.shards: {path}: {len(bad)} of {len(samples)} sample(s) with {what}, "
                f"e.g. {shown}"
            )
    return samples, problems


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _unseen_classes(labels: List[str], splits: List[int], names: List[str]) -> List[str]:
    """A val/test shard's class that no train shard has, named with the samples holding it
    (shard:key): training would never see it."""
    train = {v for v, s in zip(labels, splits) if s == 0}
    out = []
    for s, split in ((1, "val"), (2, "test")):
        extra: Dict[str, List[str]] = {}
        for v, sp, n in zip(labels, splits, names):
            if sp == s and v not in train:
                extra.setdefault(v, []).append(n)
        for v, where in sorted(extra.items()):
            out.append(
                f"data.shards.{split}: class {v!r} is in {len(where)} {split} sample(s) (e.g. "
                f"{', '.join(where[:3])}) but in no train shard; training never sees it"
            )
    return out


def _splits(cfg) -> Dict[int, Any]:
    shards = {k: v for k, v in dict(_plain(cfg.shards) or {}).items() if v not in (None, "")}
    out: Dict[int, Any] = {}
    bad = [k for k in shards if str(k).lower() not in SPLIT_NAMES]
    if bad:
        raise ConfigError(
            f"data.shards has {bad}: not a split; expected train, val (or validation) and test"
        )
    for k, v in shards.items():
        s = SPLIT_NAMES[str(k).lower()]
        if s in out:
            raise ConfigError(f"data.shards names the {('train', 'val', 'test')[s]} split twice")
        out[s] = (str(k), v)
    if 0 not in out:
        raise ConfigError(
            "data.shards.train is not set; expected the training shards, e.g. "
            "data.shards.train='data/train-{000..009}.tar'"
        )
    return out


def records(cfg, base: Path) -> Records:
    group_field = str(cfg.get("group_column") or "group")
    problems: List[str] = []
    labels: List[str] = []
    splits: List[int] = []
    names: List[str] = []
    wheres: List[Tuple[str, int, int]] = []
    groups: List[Optional[str]] = []
    seen_shards: Dict[str, str] = {}
    train_shards: List[str] = []
    for s, (key, spec) in sorted(_splits(cfg).items()):
        for path in shard_paths(spec, base, key):
            real = os.path.realpath(path)
            if real in seen_shards:
                problems.append(
                    f"data.shards.{key}: {path} is also a shard of data.shards.{seen_shards[real]}"
                )
                continue
            seen_shards[real] = key
            if s == 0:
                train_shards.append(str(path))
            samples, found = index_shard(path, group_field)
            problems.extend(found)
            for smp in samples:
                if smp["image"] is None or smp["label"] is None:
                    continue
                labels.append(smp["label"])
                splits.append(s)
                names.append(f"{path.name}:{smp['key']}")
                wheres.append(smp["image"])
                groups.append(smp["group"])
    problems.extend(_unseen_classes(labels, splits, names))
    if problems:
        raise ConfigError(problems[: 2 * SHOWN])
    shown = {k: v for k, v in dict(_plain(cfg.shards)).items() if v is not None}
    from collections import Counter

    dup = sorted(n for n, c in Counter(names).items() if c > 1)
    if dup:
        raise ConfigError(
            f"data.shards: {len(dup)} sample name(s) twice, e.g. {dup[:3]}: two shards of one "
            "file name (in different folders) holding the same keys; rename one of them"
        )
    idx, class_names = label_index(labels, lambda k: f"{names[k]} label")
    has_group = any(g is not None for g in groups)
    group = None
    if has_group:
        group = np.array(
            [g if g is not None else f"sample:{n}" for g, n in zip(groups, names)], dtype=object
        )
    return Records(
        "wds",
        class_names,
        idx,
        np.array(splits, np.int8),
        names,
        wheres,
        read=read_member,
        group=group,
        source=f"data.shards={shown}",
        stream=Streamed(
            train_shards,
            int(cfg.get("shuffle_buffer") or 0),
            int(cfg.get("sample_size") or 0),
            {t: int(k) for t, k in zip(labels, idx)},
        )
        if bool(cfg.get("stream", False))
        else None,
    )


# ----------------------------------------------------------------------------- streamed
def split_by_rank(src, rank: int = 0, world: int = 1):
    """webdataset nodesplitter: this DDP process's share of the shard urls (every world-th
    one from its rank on). Every process is handed the same, epoch-seeded, order, so the
    shares are disjoint and together are every shard."""
    for k, item in enumerate(src):
        if k % world == rank:
            yield item


def epoch_shards(shards: List[str], shuffle: bool, seed: int, epoch: int) -> List[str]:
    """The epoch's shard order: a permutation seeded by (seed, epoch), the same in every
    process (split_by_rank then deals it out)."""
    if not shuffle:
        return list(shards)
    rng = np.random.default_rng([seed, epoch, 28])
    return [shards[k] for k in rng.permutation(len(shards))]


def _first(sample: Dict[str, Any], exts) -> Optional[str]:
    return next((k for k in sample if k in exts), None)


class _Keep:
    """webdataset select(): the samples of the split (carved val/test left out)."""

    def __init__(self, names):
        self.names = frozenset(names)

    def __call__(self, sample) -> bool:
        return f"{os.path.basename(sample['__url__'])}:{sample['__key__']}" in self.names


class _Decode:
    """webdataset map(): a sample's (image tensor, label), or Unreadable naming shard:key.
    Decoded within the limits, through the split's transform; 8-bit images come back uint8
    before ToTensor + Normalize (normalised on the device, as runner.data._Transformed)."""

    def __init__(self, label_of, mode, limits, transform, before_to_tensor):
        self.label_of, self.mode, self.limits = label_of, mode, limits
        self.transform, self.before = transform, before_to_tensor

    def __call__(self, sample):
        import io

        from runner.data import Unreadable, _bomb_error, _is_8bit_pil, open_image

        name = f"{os.path.basename(sample['__url__'])}:{sample['__key__']}"
        try:
            img_ext, label_ext = _first(sample, IMAGE_EXTS), _first(sample, LABEL_EXTS)
            if img_ext is None or label_ext is None:
                raise ValueError(f"no image or no label member (has {sorted(sample)})")
            text = _text(sample[label_ext])
            if text not in self.label_of:
                raise ValueError(f"label {text!r} is not one the index read")
            with open_image(io.BytesIO(sample[img_ext]), *self.limits) as im:
                img = im.convert(self.mode)
            if self.before is not None and _is_8bit_pil(img):
                from torchvision.transforms.functional import pil_to_tensor

                return pil_to_tensor(self.before(img)), self.label_of[text]
            return self.transform(img), self.label_of[text]
        except (OSError, ValueError, SyntaxError, _bomb_error()) as e:
            return Unreadable(name, f"{type(e).__name__}: {e}")


def _as_float(x, mean, std):
    from runner.data import _normalise

    return x if x.dtype.is_floating_point else _normalise(x, mean, std)


class ShardStreamLoader:
    """The train split's shards read in sequence through webdataset, per epoch: the shard
    order seeded by (seed, epoch) and dealt out to the DDP processes (split_by_rank) and the
    DataLoader workers (webdataset.split_by_worker), the samples mixed in a shuffle buffer
    of data.shuffle_buffer, decoded and transformed in the workers, batched.

    Training (`train`): every process makes the same number of full batches (`len`), the
    fewest its shards can give in any epoch; the rest of an epoch's samples are left out
    (at most a batch's worth per process and a shard's worth of uneven shards). `epoch(e,
    start)` replays the epoch's stream and drops its first `start` batches: the same samples
    (the order is seeded), decoded again, with other random augmentation draws."""

    def __init__(
        self,
        *,
        split: "ShardStreamSplit",
        batch_size: int,
        shuffle: bool,
        seed: int,
        device,
        train: bool = True,
        num_workers: int = 0,
        drop_last: bool = False,
        zero_inputs: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        import torch

        from runner.data import _before_to_tensor

        self.split, self.seed, self.device, self.zero_inputs = split, seed, device, zero_inputs
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.world, self.num_workers, self.train = rank, world, num_workers, train
        self.local = max(1, batch_size // world)
        shards = split.shard_counts
        if len(shards) < world:
            raise ConfigError(
                f"data.stream=true: {len(shards)} train shard(s) for {world} DDP processes; "
                "every process reads whole shards: write at least one shard per process"
            )
        tf = (
            split.train_transform
            if train and split.train_transform is not None
            else split.eval_transform
        )
        self._decode = _Decode(
            split.label_of,
            split.mode,
            split.limits,
            tf,
            _before_to_tensor(tf, split.mean, split.std),
        )
        self._mean = torch.tensor(split.mean).view(1, -1, 1, 1)
        self._std = torch.tensor(split.std).view(1, -1, 1, 1)
        self._mean_d, self._std_d = self._mean.to(device), self._std.to(device)

    def _count(self, epoch: int) -> int:
        """Samples this process reads in `epoch`."""
        order = epoch_shards(list(self.split.shard_counts), self.shuffle, self.seed, epoch)
        return sum(self.split.shard_counts[s] for s in order[self.rank :: self.world])

    def __len__(self) -> int:
        if not self.train:
            return math.ceil(self._count(0) / self.local)
        # the fewest samples any process can get: the smallest len // world shards
        counts = sorted(self.split.shard_counts.values())
        fewest = sum(counts[: len(counts) // self.world])
        return max(1, fewest // self.local)

    def _pipeline(self, epoch: int):
        import functools

        import webdataset as wds

        urls = epoch_shards(list(self.split.shard_counts), self.shuffle, self.seed, epoch)
        ds = wds.WebDataset(
            urls,
            shardshuffle=False,  # the order is epoch_shards', the same in every process
            nodesplitter=functools.partial(split_by_rank, rank=self.rank, world=self.world),
            workersplitter=wds.split_by_worker,
            empty_check=False,
        ).select(_Keep(self.split.keep))
        if self.shuffle:
            ds = ds.shuffle(self.split.shuffle_buffer, seed=self.seed * 100_003 + epoch)
        return ds.map(self._decode)

    def epoch(self, epoch: int, start: int = 0):
        import functools

        import torch
        from torch.utils.data import DataLoader

        from runner.data import _collate_skip_bad, _epoch_generator, _normalise
        from runner.errors import UnreadableFiles

        n = len(self) if self.train else None
        loader = DataLoader(
            self._pipeline(epoch),
            batch_size=self.local,
            num_workers=min(self.num_workers, len(self.split.shard_counts)),
            collate_fn=functools.partial(_collate_skip_bad, mean=self._mean[0], std=self._std[0]),
            generator=_epoch_generator(self.seed + 7919 * start, epoch),
            pin_memory=self.device.type == "cuda",
        )
        xs, ys, have, made = [], [], 0, 0

        def cut(k):
            nonlocal xs, ys, have
            x, y = torch.cat(xs), torch.cat(ys)
            xs, ys, have = [x[k:]], [y[k:]], have - k
            return x[:k], y[:k]

        def out(x, y):
            x = x.to(self.device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = _normalise(x, self._mean_d, self._std_d)
            if self.zero_inputs:
                x = torch.zeros_like(x)
            return x, y.to(self.device, non_blocking=True)

        for x, y, bad in loader:
            if bad:
                self.split.unreadable.update((b.name, b.error) for b in bad)
                if self.split.on_unreadable == "fail":
                    raise UnreadableFiles(bad)
            if x is None:
                continue
            if xs and xs[0].dtype != x.dtype:  # one batch of each kind: normalise both
                xs = [_as_float(t, self._mean, self._std) for t in xs]
                x = _as_float(x, self._mean, self._std)
            xs.append(x)
            ys.append(y)
            have += len(y)
            while have >= self.local and (n is None or made < n):
                bx, by = cut(self.local)
                made += 1
                if made > start:
                    yield out(bx, by)
            if n is not None and made >= n:
                return
        if have and (n is None or (made < n and not self.drop_last)):
            bx, by = cut(have)
            made += 1
            if made > start:
                yield out(bx, by)


class ShardStreamSplit(StreamSplit):
    """The train split of data.stream=true: its count, labels and names from the shards'
    index (no image read), its loader ShardStreamLoader (the shards in sequence). Item
    access (`dataset[i]`, `load(i)`, what a check asks for) reads that one member by its
    offset."""

    def loader(
        self,
        batch_size,
        shuffle,
        seed,
        device,
        train=False,
        num_workers=0,
        drop_last=False,
        zero_inputs=False,
        aug_transform=None,
        rank=0,
        world=1,
    ):
        split = self
        if aug_transform is not None and train:
            import copy

            split = copy.copy(self)
            split.train_transform = aug_transform
        return ShardStreamLoader(
            split=split,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            device=device,
            train=train,
            num_workers=num_workers,
            drop_last=drop_last,
            zero_inputs=zero_inputs,
            rank=rank,
            world=world,
        )


class Streamed:
    """Records.stream of data.stream=true: how bundle() makes the train split (streamed) and
    the fingerprint (from the index: no image is read to make it), and what inspect samples."""

    def __init__(
        self, shards: List[str], shuffle_buffer: int, sample_size: int, label_of: Dict[str, int]
    ):
        self.shards, self.shuffle_buffer, self.sample_size = shards, shuffle_buffer, sample_size
        self.label_of = label_of  # a label member's text -> class index

    def train_split(self, rec: Records, idx: np.ndarray, mode: str, limits, *args):
        split = ShardStreamSplit(*args)
        names = [rec.names[int(i)] for i in idx]
        counts = {s: 0 for s in self.shards}
        for i in idx:
            counts[rec.where[int(i)][0]] += 1
        split.shard_counts = {s: c for s, c in counts.items() if c}
        split.keep = frozenset(names)
        split.label_of = self.label_of
        split.mode, split.limits, split.shuffle_buffer = mode, limits, self.shuffle_buffer
        return split

    def fingerprint(self, rec: Records, split: np.ndarray) -> str:
        """Per split, the sorted (class name, shard:key, image size): the shards' index, not
        the image bytes (reading them all is what streaming avoids)."""
        from runner.data import _fingerprint

        parts: List[str] = ["wds-stream"]
        for s in range(3):
            rows = np.flatnonzero(split == s)
            if len(rows):
                parts.append(("train", "val", "test")[s])
                parts.extend(
                    sorted(
                        f"{rec.class_names[rec.labels[i]]}:{rec.names[i]}:{rec.where[i][2]}"
                        for i in rows
                    )
                )
        return _fingerprint(*parts)

    def notes(self, n_train: int) -> List[str]:
        return [
            f"data.stream=true: the {n_train} train images are read shard by shard through "
            f"webdataset with a shuffle buffer of {self.shuffle_buffer} (an approximate shuffle; "
            "a resumed epoch replays its stream and drops the batches done); the data "
            "fingerprint is made from the shards' index (names, labels, sizes), not the image "
            "bytes"
        ]

    def sample(self, split: np.ndarray, seed: int) -> np.ndarray:
        """The records stage=inspect reads: at most sample_size of each split, seeded."""
        rng = np.random.default_rng([seed, 28])
        keep = []
        for s in range(3):
            rows = np.flatnonzero(split == s)
            if len(rows) > self.sample_size:
                rows = np.sort(rng.choice(rows, self.sample_size, replace=False))
            keep.append(rows)
        return np.sort(np.concatenate(keep))
