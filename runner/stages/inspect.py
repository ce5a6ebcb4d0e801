"""stage=inspect: recipe stage 1 - become one with the data. No network at all.

Stream every image of both splits once (bounded memory: a row of numbers and a 16x16 grey
thumbnail per image), run the data checks (runner/checks/data.py) on that table, and write
what a person needs to look at: per-class sample grids, distributions, class counts,
duplicate/leakage groups, corrupt files, outliers and "sorted by" strips, plus the same
evidence as images.csv and inspect.json for programs.

Folders are scanned here (not through build_data) so that an empty class or an undecodable
file is reported instead of stopping the run; every other data kind comes from build_data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from runner.checks import Verdict
from runner.checks import data as dc
from runner.checks.registry import is_enabled
from runner.errors import ConfigError
from runner.report import Figure, Links, Section, Table, Text, verdict_counts
from runner.stages.protocol import Context, Headline, NoParams, Rows, StageResult, run_check

log = logging.getLogger("runner")


@dataclass
class InspectParams(NoParams):
    """stage.params of stage=inspect: how images are measured and how much evidence the report
    shows. The data checks' thresholds are each check's own: checks.data_<name>.* (runner/
    checks/registry.py)."""

    # pixel statistics are measured on a copy whose longer side is at most this many pixels
    # (sharpness depends on scale, so every image is judged at one scale)
    analysis_size: int = 128
    # images listed per check in checks.json and the report (all are in images.csv)
    max_listed: int = 50
    # report: sample images per class and split, and how many classes the grids show
    samples_per_class: int = 8
    max_classes_shown: int = 20
    # report: images per "sorted by" strip and per flag, groups of duplicates shown
    strip_length: int = 10
    max_groups_shown: int = 12
    # report thumbnails are drawn this many pixels on their longer side
    thumb_size: int = 64


Params = InspectParams


def settings(params=None, checks=None, **overrides) -> SimpleNamespace:
    """stage=inspect's settings in one namespace: its stage.params (`params`) and the
    thresholds of the checks in runner/checks/data.py (`checks`: the config's checks node),
    each a default where not given; `overrides` (tests, benchmarks) by name."""
    from runner.checks.registry import CHECKS

    out = {f.name: getattr(Params(), f.name) for f in fields(Params)}
    out.update({k: params[k] for k in list(out) if params is not None and k in params})
    for c in CHECKS.values():
        if not c.where.startswith("runner.checks.data:"):
            continue  # label_issues and spurious read their settings themselves
        node = checks.get(c.key) if checks is not None else None
        for f in fields(c.settings):
            if f.name != "enabled":
                given = node is not None and f.name in node
                out[f.name] = node[f.name] if given else getattr(c.settings(), f.name)
    unknown = set(overrides) - set(out)
    if unknown:
        raise TypeError(f"not a stage=inspect setting: {', '.join(sorted(unknown))}")
    out.update(overrides)
    return SimpleNamespace(**out)


def _settings(cfg) -> SimpleNamespace:
    return settings(cfg.stage.params, cfg.checks)


def outcome(run_dir: Path):
    """from=<an inspect run>: the config it looked at the data with (no weights)."""
    from runner.lineage import run_outcome

    return run_outcome(run_dir)


def headline(run_dir: Path, own=()) -> Headline:
    return Headline(None, "looked at the data (no training)")


# ----------------------------------------------------------------------------- sources
class _FileItems:
    """Image files read from disk: content hash of the bytes, full decode (catches truncation)."""

    def __init__(
        self, paths: Sequence[str], analysis_size: int, max_pixels: int = 0, max_bytes: int = 0
    ):
        self.paths, self.analysis_size = list(paths), analysis_size
        # data.max_image_pixels / max_image_bytes: memory stays bounded on hostile folders
        self.max_pixels, self.max_bytes = max_pixels, max_bytes

    def _raw(self, i: int) -> bytes:
        from runner.data import ImageTooLarge

        nbytes = os.path.getsize(self.paths[i])
        if self.max_bytes and nbytes > self.max_bytes:
            raise ImageTooLarge(f"{nbytes:,} bytes, over data.max_image_bytes={self.max_bytes:,}")
        with open(self.paths[i], "rb") as f:
            return f.read()

    def open(self, i: int):
        """(PIL image, content hash, file bytes, full (width, height)); raises on a bad file,
        and on one over the decoding limits before reading or decoding it."""
        from PIL import Image

        from runner.data import ImageTooLarge

        raw = self._raw(i)
        try:
            im = Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(f"a decompression bomb: {e}") from None
        size = im.size
        if im.format == "JPEG" and max(size) > 2 * self.analysis_size:
            # decode at a reduced scale (DCT scaling): the statistics use a small copy anyway
            im.draft(im.mode, (2 * self.analysis_size, 2 * self.analysis_size))
        w, h = im.size  # what will be decoded (a JPEG's reduced scale)
        if self.max_pixels and w * h > self.max_pixels:
            raise ImageTooLarge(
                f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, over "
                f"data.max_image_pixels={self.max_pixels:,}"
            )
        im.load()
        return im, hashlib.sha1(raw).hexdigest()[:16], len(raw), size


class _RecordItems(_FileItems):
    """Images of a records kind (runner/sources): a file, or bytes its kind reads (a saved
    dataset's row, a tar member), measured like files."""

    def __init__(self, rec, analysis_size: int, max_pixels: int = 0, max_bytes: int = 0):
        files = rec.read is None
        super().__init__(rec.where if files else rec.names, analysis_size, max_pixels, max_bytes)
        self.rec, self.files = rec, files

    def _raw(self, i: int) -> bytes:
        if self.files:
            return super()._raw(i)
        from runner.data import ImageTooLarge

        raw = self.rec.raw(i)
        if self.max_bytes and len(raw) > self.max_bytes:
            raise ImageTooLarge(f"{len(raw):,} bytes, over data.max_image_bytes={self.max_bytes:,}")
        return raw


class _SplitItems:
    """Images of a DataBundle's splits, one after the other (in-memory tensors or a map-style
    dataset)."""

    def __init__(self, *splits):
        self.splits = tuple(splits)
        self.starts = np.cumsum([0] + [len(sp) for sp in self.splits])

    def open(self, i: int):
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        split, j = self.splits[k], i - int(self.starts[k])
        if hasattr(split, "x"):  # TensorSplit
            return split.x[j], "", -1, None
        return split.dataset[j][0], "", -1, None


class _StatsDataset:
    """Map-style dataset for a DataLoader: item i -> (i, stats row or None, thumb, error, hash)."""

    def __init__(self, items, analysis_size: int):
        self.items, self.analysis_size = items, analysis_size

    def __len__(self):
        return (
            len(self.items.paths)
            if hasattr(self.items, "paths")
            else sum(len(s) for s in self.items.splits)
        )

    def __getitem__(self, i: int):
        try:
            img, content_hash, nbytes, size = self.items.open(i)
        except Exception as e:  # noqa: BLE001 - every way a file can fail to decode is a finding
            return i, None, None, f"{type(e).__name__}: {e}", ""
        row, thumb = dc.image_stats(img, self.analysis_size)
        if size is not None:  # a JPEG decoded at reduced scale keeps its real size
            row["width"], row["height"] = int(size[0]), int(size[1])
        row["file_bytes"] = nbytes if nbytes >= 0 else float("nan")
        return i, row, thumb, "", content_hash


def _as_list(batch):
    return batch


@dataclass
class Source:
    """What will be inspected: every image's split, label and name, and how to open it."""

    kind: str
    class_names: List[str]
    split: np.ndarray
    label: np.ndarray
    names: List[str]
    items: Any
    fingerprint: str
    notes: List[str] = field(default_factory=list)
    # folders: the absolute data.root that `names` are relative to
    root: Optional[str] = None
    # records with a group column (runner/sources): the group of every image
    group: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.names)

    def image(self, i: int):
        """Image i as an HxWxC uint8 array for display (None when unreadable)."""
        try:
            img = self.items.open(i)[0]
            return dc.to_array(img)[0]
        except Exception:  # noqa: BLE001
            return None


def scan_imagefolder(
    root: Path,
    val_fraction: float,
    split_seed: int,
    analysis_size: int,
    max_pixels: int = 0,
    max_bytes: int = 0,
    test_fraction: float = 0.0,
) -> Source:
    """The files training would read (timm's folder walk and extensions, data.py's layout
    and split: train/, val/ (or valid/, validation/), test/, or one folder of classes), plus
    class folders without images, which training would refuse and inspect reports."""
    from timm.utils.misc import natural_key

    from runner.data import (
        folder_layout,
        image_extensions,
        split_indices,
        walk_image_folder,
    )
    from runner.sources import content_fingerprint, file_digest

    layout = folder_layout(root)
    tops = [layout[s] for s in ("train", "val", "test") if layout[s] is not None]
    split_of_top = [si for si, s in enumerate(("train", "val", "test")) if layout[s] is not None]
    exts = image_extensions()
    per_top = []
    names = set()
    notes = []
    for top in tops:
        samples, classes, ignored = walk_image_folder(top)
        per_top.append(samples)
        names |= set(classes)
        if ignored:
            notes.append(
                f"{top}: {ignored} file(s) ignored: not {', '.join(sorted(exts))} "
                "(training does not read them either)"
            )
    class_names = sorted(names, key=natural_key)
    cidx = {c: k for k, c in enumerate(class_names)}
    if not class_names:
        raise ConfigError(
            f"data.root: {root} has no class folders; expected one folder per class "
            "(or train/ and val/ folders of class folders)"
        )
    paths = [p for samples in per_top for p, _ in samples]
    labels = [cidx[c] for samples in per_top for _, c in samples]
    split = np.concatenate(
        [np.full(len(samples), si, np.int8) for si, samples in zip(split_of_top, per_top)]
    )
    n_train = len(per_top[0])
    if n_train:
        # the split training will use (same order as timm's ImageDataset, same seed): what
        # data.py carves from train/ (val when there is no val folder; test with
        # data.test_fraction when there is no test folder)
        _, va, te = split_indices(
            np.array(labels[:n_train]),
            val_fraction,
            test_fraction if layout["test"] is None else 0.0,
            split_seed,
            carve_val=layout["val"] is None,
        )
        split[va] = 1
        split[te] = 2
    rel = [str(Path(p).relative_to(root)) for p in paths]  # names: relative to data.root
    fp = content_fingerprint(split, np.array(labels), class_names, [file_digest(p) for p in paths])
    return Source(
        "imagefolder",
        class_names,
        split,
        np.array(labels, np.int32),
        rel,
        _FileItems(paths, analysis_size, max_pixels, max_bytes),
        fp,
        notes,
        str(root),
    )


def records_source(cfg, ctx: Context, analysis_size: int) -> Source:
    """A records kind (a labels file, a saved dataset, shards): its images read as files, with
    the split training will use (runner.sources.assign_splits) and its groups."""
    from runner import sources
    from runner.data import DATA_KINDS

    rec = DATA_KINDS[cfg.data.kind].read_records(cfg.data, Path(ctx.original_cwd))
    split, fp = sources.settle(rec, cfg.data)  # as training splits and fingerprints it
    notes = list(rec.notes)
    if rec.stream is not None:  # data=wds data.stream=true: a sample of each split
        import dataclasses

        keep = rec.stream.sample(split, int(cfg.seed))
        counts = [(int((split[keep] == s).sum()), int((split == s).sum())) for s in range(3)]
        said = ", ".join(f"{dc.SPLITS[s]} {n:,} of {m:,}" for s, (n, m) in enumerate(counts) if m)
        notes.append(
            f"data.stream=true: checked on a sample of {len(keep):,} of {len(rec):,} images "
            f"({said}; data.sample_size={rec.stream.sample_size} per split, seeded): "
            "duplicates, leakage, label issues and every other check see only these"
        )
        rec = dataclasses.replace(
            rec,
            labels=rec.labels[keep],
            split=rec.split[keep],
            names=[rec.names[i] for i in keep],
            where=[rec.where[i] for i in keep],
            group=rec.group[keep] if rec.group is not None else None,
        )
        split = split[keep]
    return Source(
        rec.kind,
        list(rec.class_names),
        split,
        rec.labels.astype(np.int32),
        list(rec.names),
        _RecordItems(
            rec,
            analysis_size,
            int(cfg.data.max_image_pixels or 0),
            int(cfg.data.max_image_bytes or 0),
        ),
        fp,
        notes,
        rec.root,
        group=rec.group,
    )


def bundle_source(cfg, ctx: Context) -> Source:
    """Every other data kind: the splits build_data makes (the images training sees)."""
    from runner.stages.common import build_data_for

    data = build_data_for(cfg, ctx)
    tr = data.train
    splits = list(data.splits().items())  # train, val[, test]
    labels = np.concatenate([sp.labels.numpy() for _, sp in splits]).astype(np.int32)
    split = np.concatenate(
        [np.full(len(sp), dc.SPLITS.index(name), np.int8) for name, sp in splits]
    )
    names = [f"{name}/{sp.name(i)}" for name, sp in splits for i in range(len(sp))]
    notes = list(data.notes)
    if hasattr(tr, "x"):
        notes.append(
            f"in-memory images at the net's input size ({data.image_size} px): "
            "sizes and modes are the preprocessed ones"
        )
    return Source(
        data.kind,
        list(data.class_names),
        split,
        labels,
        names,
        _SplitItems(*[sp for _, sp in splits]),
        data.fingerprint,
        notes,
    )


def not_checked(source: Source, table: dc.ImageTable) -> List[Dict[str, str]]:
    """What the data checks could not look at for this data kind, and why: [{check, reason}].

    Images that are not files have no file size, format or undecoded bytes; images the data
    kind stores resized (in-memory kinds) or a dataset returns as tensors of one size have
    lost their original size and aspect; float tensors outside 0..1 are read clipped. Empty
    for image folders (every check sees the files)."""
    if source.root is not None or not isinstance(source.items, _SplitItems):
        return []
    ok = np.flatnonzero(table.ok)
    first = source.items.open(int(ok[0]))[0] if len(ok) else None
    in_memory = hasattr(source.items.splits[0], "x")  # TensorSplit: resized by build_data
    is_pil = hasattr(first, "mode") and hasattr(first, "convert")
    what = (
        "in-memory tensors"
        if in_memory
        else f"{'PIL image' if is_pil else type(first).__name__} items of a {source.kind} dataset"
        if first is not None
        else f"items of a {source.kind} dataset"
    )
    out = [
        {
            "check": "data.spurious: file size",
            "reason": f"no files: the images are {what}, so there is no file size to compare",
        },
        {
            "check": "data.spurious: file format",
            "reason": f"no files: the images are {what}, so there is no file format (suffix) "
            "to compare",
        },
    ]
    if in_memory:
        out.append(
            {
                "check": "data.corrupt",
                "reason": f"no files to decode: {what} are decoded already (the check "
                "passes trivially)",
            }
        )
    n = table.num
    one_size = len(ok) and len({(int(n["width"][i]), int(n["height"][i])) for i in ok}) == 1
    if in_memory or (one_size and not is_pil):
        size = f"{int(n['width'][ok[0]])}x{int(n['height'][ok[0]])} px" if len(ok) else "?"
        why = (
            f"stored at the net's input size ({size}) by data={source.kind}"
            if in_memory
            else f"every item is a tensor of one size ({size})"
        )
        out.append(
            {
                "check": "original image size and aspect (data.odd_size, "
                "data.odd_aspect, data.outliers size/aspect, data.spurious "
                "width/height/aspect)",
                "reason": f"{why}: the original sizes, if they differed, are gone before "
                "the images reach inspect",
            }
        )
    if first is not None and not is_pil and not in_memory:
        a = first.detach().cpu().numpy() if hasattr(first, "detach") else np.asarray(first)
        if a.dtype != np.uint8 and a.size and (a.min() < 0 or a.max() > 1):
            out.append(
                {
                    "check": "brightness and contrast (data.dark, data.bright, "
                    "data.low_information, data.outliers brightness)",
                    "reason": f"the dataset returns float tensors in {a.min():.2f}.."
                    f"{a.max():.2f} (already normalised?): read as 0..1, "
                    "clipped, so their levels are not the original ones",
                }
            )
    return out


def stream_table(
    source: Source, analysis_size: int, num_workers: int, progress: bool = True
) -> Tuple[dc.ImageTable, float]:
    """Every image through `image_stats`, in workers, in order; returns (table, images/s)."""
    import torch
    from torch.utils.data import DataLoader

    n = len(source)
    table = dc.ImageTable.empty(n, source.class_names)
    ds = _StatsDataset(source.items, analysis_size)
    loader = DataLoader(
        ds,
        batch_size=32,
        num_workers=num_workers,
        collate_fn=_as_list,
        shuffle=False,
        persistent_workers=False,
    )
    t0 = time.perf_counter()
    next_log = t0 + 10.0
    done = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-image numpy work; workers give the parallelism
    try:
        for batch in loader:
            for i, row, thumb, error, content_hash in batch:
                table.set_row(
                    i,
                    int(source.split[i]),
                    int(source.label[i]),
                    source.names[i],
                    row,
                    thumb,
                    error,
                    content_hash,
                )
            done += len(batch)
            if progress and time.perf_counter() > next_log:
                rate = done / (time.perf_counter() - t0)
                log.info("inspect: %d / %d images (%.0f images/s)", done, n, rate)
                next_log = time.perf_counter() + 10.0
    finally:
        torch.set_num_threads(threads)
    secs = time.perf_counter() - t0
    return table, (n / secs if secs > 0 else float("nan"))


# ----------------------------------------------------------------------------- figures
def _thumb(a: Optional[np.ndarray], size: int) -> np.ndarray:
    """HxWxC uint8 -> RGB tile no larger than size x size (aspect kept); grey X when missing."""
    from PIL import Image

    if a is None:
        t = np.full((size, size, 3), 200, np.uint8)
        d = np.arange(size)
        t[d, d] = t[d, size - 1 - d] = 120
        return t
    im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    if max(im.size) > size:
        im.thumbnail((size, size), Image.BILINEAR)
    elif max(im.size) < size:  # small images (digits) are upscaled with visible pixels
        k = max(1, size // max(im.size))
        im = im.resize((im.size[0] * k, im.size[1] * k), Image.NEAREST)
    t = np.asarray(im.convert("RGB"))
    return t


def thumb_rows(
    rows: Sequence[Tuple[str, Sequence[Tuple[Optional[np.ndarray], str]]]],
    title: str,
    size: int = 64,
):
    """One mosaic: a row per (row title, [(image, caption), ...]); a caption under each tile.

    Drawn as one imshow at one canvas pixel per screen pixel (fast for hundreds of tiles)."""
    import matplotlib.pyplot as plt

    import runner.plots  # noqa: F401  (Agg backend)

    cell_w, cell_h, cap_h, label_w, pad = size + 44, size, 36, 140, 6
    ncol = max(1, max((len(r[1]) for r in rows), default=1))
    W = label_w + ncol * cell_w + pad
    H = len(rows) * (cell_h + cap_h + pad) + pad + 30
    canvas = np.full((H, W, 3), 255, np.uint8)
    texts = []
    for r, (row_title, tiles) in enumerate(rows):
        y0 = 30 + pad + r * (cell_h + cap_h + pad)
        texts.append((pad, y0 + cell_h / 2, row_title, 8, "left"))
        for c, (img, cap) in enumerate(tiles):
            t = _thumb(img, size)
            x0 = label_w + c * cell_w + (cell_w - t.shape[1]) // 2
            yy = y0 + (cell_h - t.shape[0]) // 2
            canvas[yy : yy + t.shape[0], x0 : x0 + t.shape[1]] = t
            canvas[yy - 1 : yy + t.shape[0] + 1, [x0 - 1, x0 + t.shape[1]]] = 160
            canvas[[yy - 1, yy + t.shape[0]], x0 - 1 : x0 + t.shape[1] + 1] = 160
            lines = [ln for part in cap.split("\n") for ln in _wrap(part, 21, 2)][:3]
            for k, line in enumerate(lines):
                x = label_w + c * cell_w + cell_w / 2
                texts.append((x, y0 + cell_h + 9 + 10 * k, line, 6.5, "center"))
    fig = plt.figure(figsize=(W / 100, H / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    ax.text(pad, 16, title, fontsize=10, weight="bold", va="center")
    for x, y, s, fs, ha in texts:
        ax.text(x, y, s, fontsize=fs, ha=ha, va="center")
    return fig


def _wrap(s: str, width: int, lines: int) -> List[str]:
    """Caption lines, broken after a '/' where one is near; the end of a long name is kept."""
    out = []
    while s and len(out) < lines:
        if len(s) <= width:
            out.append(s)
            s = ""
            break
        cut = s.rfind("/", 0, width) + 1 or width
        cut = cut if cut > width // 2 else width
        out.append(s[:cut])
        s = s[cut:]
    if s:
        out[-1] = "…" + (out[-1] + s)[-(width - 1) :]
    return out


def _short(name: str) -> str:
    p = Path(name)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def fig_class_counts(table: dc.ImageTable):
    import matplotlib.pyplot as plt

    from runner.plots import laid_out

    k = len(table.class_names)
    counts = {
        s: np.bincount(table.label[(table.split == si) & (table.label >= 0)], minlength=k)[:k]
        for si, s in enumerate(dc.SPLITS)
    }
    if k <= 60:
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * k + 1)))
        y = np.arange(k)
        shown = [s for s in dc.SPLITS if s != "test" or counts[s].sum()]
        h = 0.8 / len(shown)
        for j, s in enumerate(shown):
            ax.barh(y - 0.4 + h * (j + 0.5), counts[s], height=h, label=s)
        ax.set_yticks(y, [c[:24] for c in table.class_names], fontsize=8)
        ax.invert_yaxis()
        ax.set(title="Images per class and split", xlabel="images")
        ax.legend()
    else:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for s in dc.SPLITS:
            if s == "test" and not counts[s].sum():
                continue
            ax.hist(counts[s], bins=40, histtype="step", label=s)
        ax.set(
            title=f"Images per class ({k} classes)", xlabel="images in the class", ylabel="classes"
        )
        ax.legend()
    laid_out(fig)
    return fig


def fig_distributions(table: dc.ImageTable, max_classes: int):
    """Size, aspect ratio, and brightness/contrast per class (box plots), readable images only."""
    import matplotlib.pyplot as plt

    from runner.plots import laid_out

    ok = table.ok
    n = table.num
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    ax.scatter(n["width"][ok], n["height"][ok], s=6, alpha=0.4, rasterized=True)
    ax.set(title="Image size (each dot an image)", xlabel="width (px)", ylabel="height (px)")
    ax = axes[0, 1]
    asp = (n["width"] / n["height"])[ok]
    ax.hist(asp, bins=40)
    ax.set(title="Aspect ratio", xlabel="width / height", ylabel="images")
    classes = [c for c in range(len(table.class_names)) if (ok & (table.label == c)).any()][
        :max_classes
    ]
    for ax, key, unit in (
        (axes[1, 0], "brightness", "mean brightness (0-255)"),
        (axes[1, 1], "contrast", "brightness std (0-255)"),
    ):
        data = [n[key][ok & (table.label == c)] for c in classes]
        if data:
            ax.boxplot(data, vert=False, showfliers=True, flierprops={"markersize": 2})
            ax.set_yticks(
                range(1, len(classes) + 1), [table.class_names[c][:20] for c in classes], fontsize=7
            )
            ax.invert_yaxis()
        ax.set(title=f"{key.capitalize()} per class", xlabel=unit)
    laid_out(fig)
    return fig


# ----------------------------------------------------------------------------- the stage
@dataclass
class Findings:
    """Everything the checks found: verdicts plus the groups/pairs/lists the report draws."""

    verdicts: List[Verdict]
    groups: List[Dict[str, Any]]
    leaks: List[Dict[str, Any]]
    outliers: List[Tuple[int, List[str]]]
    flags: Dict[str, Tuple[np.ndarray, np.ndarray, str]]
    # data.label_issues: rows of label_issues.csv (empty when it did not run)
    label_issues: List[Dict[str, Any]] = field(default_factory=list)
    # data.leakage_augmented: flipped/rotated copies across splits (data.augmented_pairs)
    augmented: List[Dict[str, Any]] = field(default_factory=list)


def run_checks(
    table: dc.ImageTable,
    ic,
    checks_cfg=None,
    kind: Optional[str] = None,
    overlap: Optional[Dict[str, List[str]]] = None,
) -> Findings:
    """Every data check on the table: `ic` is settings() (stage.params and the data checks'
    thresholds), `checks_cfg` the `checks` config node that switches checks (None = defaults),
    `kind` the data kind (data=synthetic draws its label into the pixels by design), `overlap`
    the groups in two splits (runner.sources.group_overlap; data with a group column)."""
    verdicts: List[Verdict] = []

    def check(name, fn, *args):
        verdicts.append(run_check(checks_cfg, name, lambda s: _logged(name, fn, *args)))

    L = ic.max_listed
    check("data.corrupt", dc.corrupt, table, L)
    check("data.class_balance", dc.class_balance, table, ic.imbalance_ratio, ic.split_shift_tv)
    t0 = time.perf_counter()
    pairs = dc.near_pairs(table, ic.near_hash_distance, ic.near_thumb_distance, ic.near_window)
    groups, leaks = dc.duplicate_groups(table, pairs)
    log.info(
        "inspect: %d near pair(s), %d duplicate group(s), %d leak(s) in %.1f s",
        len(pairs),
        len(groups),
        len(leaks),
        time.perf_counter() - t0,
    )
    check("data.duplicates", dc.duplicates, table, groups, L)
    check("data.leakage", dc.leakage, table, leaks, L, overlap)
    augmented: List[Dict[str, Any]] = []
    if is_enabled(checks_cfg, "data.leakage_augmented"):
        t0 = time.perf_counter()
        augmented = dc.augmented_pairs(
            table,
            leaks,
            ic.augmented_hash_distance,
            ic.augmented_thumb_distance,
            ic.augmented_margin,
            ic.near_window,
        )
        log.info(
            "inspect: %d flipped/rotated cross-split copies in %.1f s",
            len(augmented),
            time.perf_counter() - t0,
        )
    check("data.leakage_augmented", dc.leakage_augmented, table, augmented, L)
    found = dc.find_outliers(table, ic.outlier_z, ic.rare_mode_fraction)
    check("data.outliers", dc.outliers, table, found, ic.outlier_z, ic.rare_mode_fraction, L)
    flags = dc.property_flags(
        table,
        ic.dark_max,
        ic.bright_min,
        ic.blurry_max,
        ic.entropy_min,
        ic.low_contrast_max,
        ic.odd_size_factor,
        ic.odd_aspect_factor,
        ic.grayscale_tolerance,
        ic.blurry_falloff_max,
    )
    for name, (mask, score, rule) in flags.items():
        check(name, dc.property_verdict, name, table, mask, score, rule, L)
    # labels: what a cheap cross-validated model confidently disagrees with
    suspects: List[Dict[str, Any]] = []
    verdicts.append(
        run_check(checks_cfg, "data.label_issues", lambda s: _label_issues(table, s, suspects))
    )
    # shortcuts: an image property that gives the label away on its own
    verdicts.append(run_check(checks_cfg, "data.spurious", lambda s: _spurious(table, s)))
    # shortcuts in the picture: a small region (tag, patch, border) that gives the label away
    verdicts.append(
        run_check(checks_cfg, "data.label_in_pixels", lambda s: _label_in_pixels(table, s, kind))
    )
    return Findings(verdicts, groups, leaks, found, flags, suspects, augmented)


def _logged(name: str, fn, *args) -> Verdict:
    log.info("check: %s", name)
    return fn(*args)


def _label_issues(table: dc.ImageTable, s, suspects: List[Dict[str, Any]]) -> Verdict:
    """data.label_issues on the readable training images (their grey thumbnails as features);
    `suspects` gets the label_issues.csv rows, `index` being the position in the train split."""
    from runner.checks.labels import (
        find_label_issues,
        image_features,
        label_issues_figure,
        label_issues_verdict,
    )

    log.info("check: data.label_issues (%d-fold cross-validated linear model)", int(s.folds))
    train = np.flatnonzero(table.split == 0)
    pos = {int(i): k for k, i in enumerate(train)}  # table row -> index in the train split
    rows = train[table.ok[train] & (table.label[train] >= 0)]
    names = table.class_names
    files = [table.name[i] for i in rows]
    if len(rows) < 2 * int(s.folds) or len(np.unique(table.label[rows])) < 2:
        res = None
    else:
        thumbs = table.thumbs[rows][:, None]
        res = find_label_issues(
            image_features(thumbs, int(s.feature_size)),
            table.label[rows],
            len(names),
            folds=int(s.folds),
        )
    v = label_issues_verdict(
        res,
        float(s.max_noise_rate),
        int(s.max_listed),
        names,
        files,
        min_skill=float(s.min_model_skill),
    )
    if res is None or v.status == "skip":
        return v
    for it in res.issues:
        i = int(rows[it.index])
        suspects.append(
            {
                "index": pos[i],
                "given": names[it.given],
                "suggested": names[it.suggested],
                "score": round(float(it.score), 6),
                "path": table.name[i],
            }
        )
    top = res.issues[: int(s.max_listed)]
    if top:
        v.figures["suspects"] = label_issues_figure(
            table.thumbs[rows][[t.index for t in top]][:, None], top, names
        )
    return v


def _spurious(table: dc.ImageTable, s) -> Verdict:
    from runner.checks.spurious import properties_from_table, spurious

    log.info("check: data.spurious (does one image property give the label away?)")
    props, labels = properties_from_table(table, 0)
    return spurious(
        props,
        labels,
        table.class_names,
        min_separation=float(s.min_separation),
        min_separation_content=float(s.min_separation_content),
        max_gain=float(s.max_gain),
        min_class_examples=int(s.min_class_examples),
    )


def _label_in_pixels(table: dc.ImageTable, s, kind: Optional[str]) -> Verdict:
    from runner.checks import skip
    from runner.checks.pixels import NAME, label_in_pixels

    if kind == "synthetic":  # runner/data.py synthetic_images: the class IS a placed square
        return skip(
            NAME,
            "data=synthetic: the class is a bright square in a class-specific cell by "
            "design, so a small region giving the label away is the data, not a shortcut",
        )
    log.info("check: data.label_in_pixels (does a small region give the label away?)")
    rows = np.flatnonzero(table.ok & (table.split < 2) & (table.label >= 0))
    sp = np.full(len(table), -1, np.int8)
    sp[rows] = table.split[rows]
    return label_in_pixels(
        table.cells,
        table.match,
        table.border,
        np.maximum(table.label, 0),
        sp,
        table.class_names,
        min_f1=float(s.min_f1),
        max_area=float(s.max_area),
        near_f1=float(s.near_f1),
        min_class_examples=int(s.min_class_examples),
    )


def run(cfg, ctx: Context) -> StageResult:

    from runner.data import DATA_KINDS

    ic = _settings(cfg)
    t_start = time.perf_counter()
    log.info("inspect: %s (no network: looking at the data)", cfg.data.kind)
    if cfg.data.kind == "imagefolder":
        root = (Path(ctx.original_cwd) / cfg.data.root).expanduser()
        source = scan_imagefolder(
            root,
            cfg.data.val_fraction,
            cfg.data.split_seed,
            ic.analysis_size,
            int(cfg.data.max_image_pixels or 0),
            int(cfg.data.max_image_bytes or 0),
            float(cfg.data.test_fraction or 0.0),
        )
    elif cfg.data.kind in DATA_KINDS and DATA_KINDS[cfg.data.kind].records:
        source = records_source(cfg, ctx, ic.analysis_size)
    else:
        source = bundle_source(cfg, ctx)
    for note in source.notes:
        log.info("inspect: %s", note)
    n_tr, n_va, n_te = (int((source.split == si).sum()) for si in range(3))
    log.info(
        "inspect: %d train / %d val%s images, %d classes",
        n_tr,
        n_va,
        f" / {n_te} test" if n_te else "",
        len(source.class_names),
    )

    from runner.data import default_workers

    workers = cfg.data.num_workers
    workers = default_workers(None, training=False) if workers is None else workers
    log.info("inspect: reading every image once (%d worker(s))", workers)
    table, ips = stream_table(source, ic.analysis_size, workers, cfg.trainer.progress)
    log.info(
        "inspect: %d images in %.1f s (%.0f images/s)",
        len(table),
        len(table) / ips if ips else 0,
        ips,
    )

    from runner.sources import group_overlap

    found = run_checks(
        table, ic, cfg.checks, source.kind, group_overlap(source.split, source.group)
    )
    verdicts = found.verdicts
    groups, leaks, outl, flags = found.groups, found.leaks, found.outliers, found.flags
    unchecked = not_checked(source, table)
    for row in unchecked:
        log.info(
            "inspect: not checked for data=%s: %s (%s)", source.kind, row["check"], row["reason"]
        )

    log.info("report: figures and tables")
    sections = report_sections(
        cfg, source, table, verdicts, groups, leaks, outl, flags, found.augmented
    )
    if unchecked:  # right after the overview: what the verdicts below could not see
        sections.insert(
            1,
            Section(
                "Not checked for this data kind",
                [
                    Text(
                        f"data={source.kind}: these checks or image properties could not run on "
                        "this kind of data; an image folder gives every check the files."
                    ),
                    Table(unchecked, ["check", "reason"]),
                ],
            ),
        )
    files = tables(source, table, groups, leaks, outl, flags, cfg, found.augmented)
    if is_enabled(cfg.checks, "data.label_issues"):
        files["label_issues.csv"] = Rows(
            found.label_issues, ["index", "given", "suggested", "score", "path"]
        )
    outputs = [*files, "checks.json", "summary.json"]
    sections.append(Section("Machine-readable files", [Links([(p, p) for p in outputs])]))

    wall = time.perf_counter() - t_start
    summary = {
        "stage": cfg.stage.name,
        "name": cfg.name,
        "status": "finished",
        "val_acc": None,
        "val_loss": None,
        "train_loss": None,
        "train_acc": None,
        "epochs": 0,
        "params": 0,
        "model": None,
        "images": len(table),
        "readable": int(table.ok.sum()),
        "images_per_s": ips,
        "wall_s": wall,
        "checks": verdict_counts(verdicts),
        "checks_failed": [v.name for v in verdicts if v.status == "fail"],
        "data": {
            "kind": source.kind,
            "num_train": n_tr,
            "num_val": len(source) - n_tr,
            "num_classes": len(source.class_names),
            "class_names": source.class_names,
            "fingerprint": source.fingerprint,
            "root": source.root,
        },
        "notes": source.notes,
        # checks/properties that could not run for this data kind: [{check, reason}]
        "not_checked": unchecked,
        "provenance": _provenance(cfg, ctx, source),
        "run_dir": str(ctx.run.path),
    }
    return StageResult(
        verdicts,
        summary,
        sections,
        files,
        title=f"inspect: {source.kind} data, {len(table)} images, "
        f"{len(source.class_names)} classes",
    )


def _provenance(cfg, ctx: Context, source: Source) -> Dict[str, Any]:
    from types import SimpleNamespace

    import torch

    from runner.stages.common import provenance

    return provenance(
        cfg, ctx.original_cwd, SimpleNamespace(fingerprint=source.fingerprint), torch.device("cpu")
    )


def tables(
    source: Source, table: dc.ImageTable, groups, leaks, found, flags, cfg, augmented=()
) -> Dict[str, Any]:
    """images.csv (one row per image, with its flags) and inspect.json (every finding)."""
    cols = table.columns()
    group_of: Dict[int, int] = {}
    for g_id, g in enumerate(groups):
        for i in g["members"]:
            group_of.setdefault(i, g_id)
    leaked = {i for p in leaks for i in dc.leak_pair(p)}
    outlier_why = {i: "; ".join(w) for i, w in found}
    n = len(table)
    cols["duplicate_group"] = [group_of.get(i, "") for i in range(n)]
    cols["leakage"] = [i in leaked for i in range(n)]
    flipped = {i for p in augmented for i in dc.leak_pair(p)}
    cols["leakage_augmented"] = [i in flipped for i in range(n)]
    cols["outlier"] = [outlier_why.get(i, "") for i in range(n)]
    for name, (mask, _, _) in flags.items():
        cols[name.split(".", 1)[1]] = mask.tolist()
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(list(cols))
    w.writerows(zip(*cols.values()))
    images_csv = buf.getvalue()
    del cols, buf
    names = table.name
    k = len(table.class_names)
    doc = {
        "kind": source.kind,
        "root": source.root,
        "images": len(table),
        "class_names": table.class_names,
        "class_counts": {
            s: {
                table.class_names[c]: int(v)
                for c, v in enumerate(
                    np.bincount(table.label[(table.split == si) & (table.label >= 0)], minlength=k)[
                        :k
                    ]
                )
            }
            for si, s in enumerate(dc.SPLITS)
        },
        "modes": dc.mode_counts(table),
        "corrupt": [
            {"name": names[i], "split": dc.SPLITS[int(table.split[i])], "error": table.error[i]}
            for i in np.flatnonzero(~table.ok)
        ],
        "duplicate_groups": [
            {
                "kind": g["kind"],
                "split": g["split"],
                "labels_differ": g["labels_differ"],
                "members": [names[i] for i in g["members"]],
            }
            for g in groups
        ],
        "leakage": [
            {
                **{sp: names[i] for sp, i in zip(p["pair"].split("-"), dc.leak_pair(p))},
                "pair": p["pair"],
                "kind": p["kind"],
                "hash_distance": p["hash_distance"],
            }
            for p in leaks
        ],
        "leakage_augmented": [
            {
                **{sp: names[i] for sp, i in zip(p["pair"].split("-"), dc.leak_pair(p))},
                "pair": p["pair"],
                "transform": p["transform"],
                "distance": p["distance"],
            }
            for p in augmented
        ],
        "outliers": [{"name": names[i], "why": w} for i, w in found],
        "flags": {
            name: [names[i] for i in np.flatnonzero(mask)] for name, (mask, _, _) in flags.items()
        },
        "thresholds": vars(_settings(cfg)),
    }
    return {"images.csv": images_csv, "inspect.json": doc}


class _Pictures:
    """Thumbnails and captions of one ImageTable's images for the report (decoded once)."""

    def __init__(self, cfg, source: Source, table: dc.ImageTable):
        self.ic, self.source, self.table = _settings(cfg), source, table
        self.size = self.ic.thumb_size
        self._cache: Dict[int, Optional[np.ndarray]] = {}

    def img(self, i: int):
        if i not in self._cache:
            self._cache[i] = self.source.image(i) if self.table.ok[i] else None
        return self._cache[i]

    def cap(self, i: int, extra: str = "") -> str:
        return (extra + "\n" if extra else "") + _short(self.table.name[i])

    def cap_class(self, i: int) -> str:  # the class, unless the name already shows it
        t = self.table
        c = t.class_names[t.label[i]] if t.label[i] >= 0 else ""
        return self.cap(i, "" if c in Path(t.name[i]).parts else c[:10])

    def rows_of(self, idx, extra=None, limit=None) -> Table:
        idx = list(idx)[: limit or self.ic.max_listed]
        return Table([dict(self.table.describe(i), **(extra(i) if extra else {})) for i in idx])


def _overview(pics: _Pictures, by_name) -> List[Section]:
    table, source = pics.table, pics.source
    modes = dc.mode_counts(table)
    overview = [
        {
            "split": s,
            "images": int((table.split == si).sum()),
            "readable": int((table.ok & (table.split == si)).sum()),
        }
        for si, s in enumerate(dc.SPLITS)
    ]
    body: List[Any] = [
        Table(overview),
        Text("Modes: " + ", ".join(f"{m}: {c}" for m, c in modes.items())),
    ]
    if source.root:
        body.insert(0, Text(f"Folder `{source.root}` (names below are relative to it)"))
    body += [Text(x, note=True) for x in source.notes]
    balance = by_name.get("data.class_balance")
    counts = balance.details.get("counts", {}) if balance is not None else {}
    return [
        Section("Data overview", body),
        Section(
            "Class counts per split",
            [
                Figure(fig_class_counts(table), "inspect_class_counts"),
                Table([dict({"class": c}, **v) for c, v in counts.items()]),
            ],
        ),
    ]


def _samples(pics: _Pictures, seed: int) -> Section:
    """Per-class random sample grids, one per split."""
    table, ic = pics.table, pics.ic
    rng = np.random.default_rng(seed)
    grids: List[Any] = []
    k_show = min(len(table.class_names), ic.max_classes_shown)
    for si, s in enumerate(dc.SPLITS):
        rows = []
        for c in range(k_show):
            idx = np.flatnonzero(table.ok & (table.split == si) & (table.label == c))
            pick = np.sort(rng.choice(idx, min(len(idx), ic.samples_per_class), replace=False))
            rows.append(
                (
                    f"{table.class_names[c][:20]} ({len(idx)})",
                    [(pics.img(i), _short(table.name[i])) for i in pick],
                )
            )
        if any(r[1] for r in rows):
            fig = thumb_rows(rows, f"{s}: random samples per class", pics.size)
            grids.append(Figure(fig, f"inspect_samples_{s}"))
    if len(table.class_names) > k_show:
        grids.append(Text(f"First {k_show} of {len(table.class_names)} classes.", note=True))
    return Section("Samples per class", grids)


def _sorted_strips(pics: _Pictures) -> List[Section]:
    """Distributions, and the images at both ends of each property (readable images only)."""
    table, ic = pics.table, pics.ic
    if not table.ok.any():
        return []
    n = table.num
    okidx = np.flatnonzero(table.ok)
    area = n["width"] * n["height"]
    strips = [
        ("darkest", n["brightness"], "{:.0f}", "brightness"),
        ("brightest", -n["brightness"], "{:.0f}", "brightness"),
        ("lowest contrast", n["contrast"], "{:.1f}", "contrast"),
        ("highest contrast", -n["contrast"], "{:.1f}", "contrast"),
        ("blurriest", n["sharpness"], "{:.3f}", "sharpness"),
        ("smallest", area, None, None),
        ("largest", -area, None, None),
    ]
    rows = []
    for title, key, fmt, col in strips:
        order = okidx[np.argsort(key[okidx], kind="stable")][: ic.strip_length]
        tiles = []
        for i in order:
            lab = fmt.format(n[col][i]) if col else f"{int(n['width'][i])}x{int(n['height'][i])}"
            tiles.append((pics.img(i), pics.cap(i, lab)))
        rows.append((title, tiles))
    fig = thumb_rows(rows, "Sorted by: outliers along each axis often reveal a bug", pics.size)
    return [
        Section(
            "Distributions",
            [Figure(fig_distributions(table, ic.max_classes_shown), "inspect_distributions")],
        ),
        Section("Sorted by brightness, contrast, sharpness, size", [Figure(fig, "inspect_sorted")]),
    ]


def _corrupt(pics: _Pictures) -> Section:
    table = pics.table
    bad = np.flatnonzero(~table.ok)
    body = (
        pics.rows_of(bad, lambda i: {"error": table.error[i]})
        if len(bad)
        else Text("None: every image decodes.")
    )
    return Section("Corrupt files", [body])


def _duplicates(pics: _Pictures, v, groups) -> Section:
    """Duplicate groups inside a split: a listing, and the groups' thumbnails on the check."""
    table, ic = pics.table, pics.ic
    if not groups or v is None:
        return Section("Duplicate groups", [Text("None found.")])
    rows = [
        (
            f"{g['kind']} · {g['split']}" + (" · labels differ" if g["labels_differ"] else ""),
            [(pics.img(i), pics.cap_class(i)) for i in g["members"][:8]],
        )
        for g in groups[: ic.max_groups_shown]
    ]
    v.figures["groups"] = thumb_rows(rows, "Duplicate groups inside a split", pics.size)
    listing = [
        {
            "group": gi,
            "kind": g["kind"],
            "split": g["split"],
            "class": table.class_names[table.label[i]],
            "name": table.name[i],
        }
        for gi, g in enumerate(groups[: ic.max_listed])
        for i in g["members"][:20]
    ]
    return Section("Duplicate groups", [Table(listing)])


def _leakage(pics: _Pictures, v, leaks) -> Section:
    """Pairs of one image across splits (train-val, train-test, val-test): a listing, and the
    pairs' thumbnails on the check."""
    table, ic = pics.table, pics.ic
    if not leaks or v is None:
        return Section("Leakage pairs", [Text("None found.")])
    rows = []
    for p in leaks[: ic.max_groups_shown * 2]:
        a, b = dc.leak_pair(p)
        rows.append(
            (
                f"{p['pair']} {p['kind']} (d={p['hash_distance']})",
                [(pics.img(a), table.name[a]), (pics.img(b), table.name[b])],
            )
        )
    v.figures["pairs"] = thumb_rows(rows, "Leakage: the same image in two splits", pics.size)
    listing = []
    for p in leaks[: ic.max_listed]:
        a, b = dc.leak_pair(p)
        listing.append(
            {
                "pair": p["pair"],
                "kind": p["kind"],
                "image": table.name[a],
                "copy": table.name[b],
                "class": table.class_names[table.label[a]],
                "copy's class": table.class_names[table.label[b]],
            }
        )
    return Section("Leakage pairs", [Table(listing)])


def _leakage_augmented(pics: _Pictures, v, pairs) -> Section:
    """Flipped/rotated copies across splits: each pair as pictures (the earlier image, the
    copy, the copy undone), with the transform named, on the check; and a listing."""
    table, ic = pics.table, pics.ic
    if not pairs or v is None:
        return Section("Flipped or rotated copies across splits", [Text("None found.")])
    rows = []
    for p in pairs[: ic.max_groups_shown * 2]:
        a, b = dc.leak_pair(p)
        copy = pics.img(b)
        undo = dc.AUGMENTATIONS.get(p["transform"].split("+")[0], lambda x: x)  # "crop": none
        undone = None
        if copy is not None:
            arr = np.asarray(copy)
            undone = np.ascontiguousarray(
                np.moveaxis(undo(np.moveaxis(arr, -1, 0)), 0, -1) if arr.ndim == 3 else undo(arr)
            )
        rows.append(
            (
                f"{p['pair']} {p['transform']} (d={p['distance']:.1f})",
                [
                    (pics.img(a), table.name[a]),
                    (copy, table.name[b]),
                    (undone, f"{table.name[b]}, undone"),
                ],
            )
        )
    v.figures["pairs"] = thumb_rows(
        rows, "Leakage: a flipped or rotated copy in another split", pics.size
    )
    listing = []
    for p in pairs[: ic.max_listed]:
        a, b = dc.leak_pair(p)
        listing.append(
            {
                "pair": p["pair"],
                "transform": p["transform"],
                "image": table.name[a],
                "copy": table.name[b],
                "distance": p["distance"],
                "as they are": p["identity_distance"],
            }
        )
    return Section("Flipped or rotated copies across splits", [Table(listing)])


def _outliers(pics: _Pictures, v, found) -> Section:
    if not found or v is None:
        return Section("Outliers", [Text("None found.")])
    per_row = 8
    shown = found[: pics.ic.max_groups_shown * per_row // 2]
    rows = [
        ("", [(pics.img(i), pics.cap(i, w[0].split(" (")[0])) for i, w in shown[r : r + per_row]])
        for r in range(0, len(shown), per_row)
    ]
    v.figures["images"] = thumb_rows(rows, "Outliers (most extreme first)", pics.size)
    why = dict(found)
    return Section("Outliers", [pics.rows_of(list(why), lambda i: {"why": "; ".join(why[i])})])


def _property_flags(pics: _Pictures, by_name, flags) -> Section:
    """A row per flag (dark, blurry, ...), and each flagged check's examples as a strip."""
    table = pics.table
    flag_rows = []
    for name, (mask, score, rule) in flags.items():
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(score[idx], kind="stable")]
        flag_rows.append(
            {
                "flag": name,
                "images": len(idx),
                "rule": rule,
                "examples": ", ".join(_short(table.name[i]) for i in idx[:3]),
            }
        )
        v = by_name.get(name)
        if len(idx) and v is not None:
            tiles = [(pics.img(i), pics.cap(i)) for i in idx[: pics.ic.strip_length]]
            v.figures["examples"] = thumb_rows(
                [(name.split(".", 1)[1], tiles)], f"{name}: {rule}", pics.size
            )
    return Section("Image properties", [Table(flag_rows)])


def report_sections(
    cfg, source: Source, table: dc.ImageTable, verdicts, groups, leaks, found, flags, augmented=()
) -> List[Section]:
    """The page a person reads: what the data looks like, then each finding with thumbnails
    (figures as data: the run's finish saves them; a check's own pictures go on its verdict)."""
    pics = _Pictures(cfg, source, table)
    by_name = {v.name: v for v in verdicts}
    return [
        *_overview(pics, by_name),
        _samples(pics, cfg.seed),
        *_sorted_strips(pics),
        _corrupt(pics),
        _duplicates(pics, by_name.get("data.duplicates"), groups),
        _leakage(pics, by_name.get("data.leakage"), leaks),
        _leakage_augmented(pics, by_name.get("data.leakage_augmented"), augmented),
        _outliers(pics, by_name.get("data.outliers"), found),
        _property_flags(pics, by_name, flags),
        *_regions(pics, by_name.get("data.label_in_pixels")),
    ]


def _regions(pics: _Pictures, v) -> List[Section]:
    """data.label_in_pixels: per telling region, each class's images with the region outlined
    and their crops of it (the evidence goes on the verdict; a table in the report)."""
    from runner.checks.pixels import crop, outlined

    if v is None or v.status != "warn":
        return []
    rows, listing = [], []
    for reg in v.details["regions"][:2]:
        for cname, idx in list(reg.get("examples", {}).items())[:10]:
            imgs = [(i, pics.img(i)) for i in idx]
            imgs = [(i, a) for i, a in imgs if a is not None]
            if not imgs:
                continue
            i0, a0 = imgs[0]
            tiles = [(outlined(a0, reg["box"]), pics.cap(i0))]
            tiles += [(crop(a, reg["box"]), "crop") for _, a in imgs]
            rows.append((f"{cname[:14]} · {reg['region']}", tiles))
        listing.append(
            {
                "region": reg["region"],
                "area": f"{reg['area']:.1%}",
                "classes": ", ".join(reg["classes"][:10]),
                "min F1": min(reg["f1"][c] for c in reg["classes"]),
            }
        )
    if rows:
        v.figures["regions"] = thumb_rows(
            rows, "data.label_in_pixels: the region (red) and each class's crops of it", pics.size
        )
    return [Section("Label written in the pixels", [Text(v.message), Table(listing)])]
