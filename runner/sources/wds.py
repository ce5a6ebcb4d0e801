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
fingerprint and seeded training curves."""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

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
    if bool(cfg.get("stream", False)):
        raise ConfigError(
            "data.stream=true (streamed shards) is not supported yet; leave data.stream=false "
            "(the shards are indexed once and read at random)"
        )
    group_field = str(cfg.get("group_column") or "group")
    problems: List[str] = []
    labels: List[str] = []
    splits: List[int] = []
    names: List[str] = []
    wheres: List[Tuple[str, int, int]] = []
    groups: List[Optional[str]] = []
    seen_shards: Dict[str, str] = {}
    for s, (key, spec) in sorted(_splits(cfg).items()):
        for path in shard_paths(spec, base, key):
            real = os.path.realpath(path)
            if real in seen_shards:
                problems.append(
                    f"data.shards.{key}: {path} is also a shard of data.shards.{seen_shards[real]}"
                )
                continue
            seen_shards[real] = key
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
    )
