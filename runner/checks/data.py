"""Recipe stage 1 checks ("become one with the data"): pure functions over per-image statistics.

`image_stats` turns one decoded image into a row of numbers (size, brightness, contrast,
sharpness, entropy, hashes); the stage streams every image through it and gathers the rows
into an `ImageTable`. The checks below take that table (plain numpy columns) and
thresholds as plain arguments and return a Verdict with the evidence in `details`; the
stage draws the thumbnails. Check names are DESIGN.md's (`data.corrupt`,
`data.duplicates`, `data.leakage`, `data.class_balance`, `data.outliers`) plus one flag per
CleanVision-style image property (`data.dark`, `data.blurry`, ...).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from runner.checks import Verdict

# the thumbnail near-duplicates are confirmed on (grey, THUMB x THUMB, uint8) ...
THUMB = 16
# ... and their colour on (two opponent channels, CHROMA x CHROMA cells, uint8 around 128):
# 32 bytes per image, enough to tell a blue sky from a grey wall of the same brightness
CHROMA = 4
# ... and their detail on a band-limited grey copy (`match_image`, MATCH x MATCH uint8, 1 KB
# per image: 100 MB per 100k images): the display thumbnail is a box average, whose 16x16
# cells alias fine texture, so a 1-px shift of a grass or gravel photo changes it as much as
# a different patch does; smoothed before it is sampled, a small shift or zoom changes it
# smoothly, the way the alignment in `aligned_distance` models
MATCH = 32
MATCH_SIGMA = 1.5  # Gaussian prefilter, in pixels of the 2*MATCH grid it is applied on
# ... and the colour of small regions (data.label_in_pixels, runner/checks/pixels.py): mean
# RGB of CELLS x CELLS cells (192 bytes per image) and of the four border strips, each
# 1/BORDER of the side thick (a frame, a ruler, a coloured edge)
CELLS = 8
BORDER = 32

NUMERIC_COLUMNS = (
    "width",
    "height",
    "channels",
    "file_bytes",
    "brightness",
    "contrast",
    "p01",
    "p99",
    "sharpness",
    "falloff_sharpness",
    "entropy",
    "colourfulness",
)


# ----------------------------------------------------------------------------- one image
def to_array(img) -> Tuple[np.ndarray, str]:
    """A PIL image, or a CxHxW / HxW tensor or array (uint8 0..255 or float 0..1), as
    (HxWxC uint8 array with C in {1, 3}, the source mode)."""
    if hasattr(img, "mode") and hasattr(img, "convert"):  # PIL
        mode = img.mode
        if mode in ("L", "1", "I", "I;16", "F", "LA", "La"):
            if mode in ("I", "I;16", "F"):
                a = np.asarray(img, dtype=np.float64)
                hi = a.max() if a.size and a.max() > 0 else 1.0
                return (a / hi * 255.0).round().astype(np.uint8)[..., None], mode
            return np.asarray(img.convert("L"))[..., None], mode
        return np.asarray(img.convert("RGB")), mode
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"expected an image of 2 or 3 dimensions, got shape {tuple(a.shape)}")
    c = a.shape[0]
    if a.dtype != np.uint8:
        a = np.clip(a.astype(np.float64) * 255.0, 0, 255).round().astype(np.uint8)
    a = np.moveaxis(a[:3] if c >= 3 else a[:1], 0, -1)
    return np.ascontiguousarray(a), ("L" if c == 1 else "RGB")


def _luma(a: np.ndarray) -> np.ndarray:
    if a.shape[-1] == 1:
        return a[..., 0].astype(np.float32)
    r, g, b = (a[..., k].astype(np.float32) for k in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b


def _resize_grey(g: np.ndarray, w: int, h: int) -> np.ndarray:
    """Area-average (box) resize of a float grey image."""
    from PIL import Image

    return np.asarray(Image.fromarray(g.astype(np.float32), mode="F").resize((w, h), Image.BOX))


def phash(g: np.ndarray) -> int:
    """64-bit perceptual hash: signs (against their median) of the 8x8 lowest DCT frequencies of
    a 32x32 area-averaged copy. Low frequencies barely move under a re-encode, a 1-px shift or
    a crop of a few %, where a gradient-sign hash (dHash) flips ~10 of 64 bits."""
    from scipy.fft import dctn

    c = dctn(_resize_grey(g, 32, 32).astype(np.float64), norm="ortho")[:8, :8].ravel()
    bits = c > np.median(c[1:])
    return int(np.packbits(bits).view(">u8")[0])


def chroma_cells(a: np.ndarray) -> np.ndarray:
    """CHROMA x CHROMA x 2 uint8: cell means of (R-G)/2 and (B-(R+G)/2)/2 around 128; grey
    images are all 128."""
    if a.shape[-1] == 1:
        return np.full((CHROMA, CHROMA, 2), 128, np.uint8)
    f = a.astype(np.float32)
    opp = ((f[..., 0] - f[..., 1]) / 2, (f[..., 2] - (f[..., 0] + f[..., 1]) / 2) / 2)
    cells = [_resize_grey(o, CHROMA, CHROMA) for o in opp]
    return np.clip(np.stack(cells, -1) + 128.0, 0, 255).round().astype(np.uint8)


def region_colours(a: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(CELLS x CELLS x 3 uint8 cell means of RGB, 4 x 4 float32 border strips: top, bottom,
    left, right, each as mean R, G, B and the std of its luma). Grey images repeat the grey."""
    from PIL import Image

    grey = a.shape[-1] == 1
    cells = np.asarray(Image.fromarray(a[..., 0] if grey else a).resize((CELLS, CELLS), Image.BOX))
    cells = np.repeat(cells[..., None], 3, -1) if grey else cells
    h, w = a.shape[:2]
    th, tw = max(1, round(h / BORDER)), max(1, round(w / BORDER))
    rows = []
    for s in (a[:th], a[h - th :], a[:, :tw], a[:, w - tw :]):
        mean = s.reshape(-1, a.shape[-1]).mean(0)
        rows.append([*(np.repeat(mean, 3) if grey else mean), _luma(s).std()])
    return np.ascontiguousarray(cells, np.uint8), np.array(rows, dtype=np.float32)


@lru_cache(maxsize=64)
def _match_operator(n: int) -> np.ndarray:
    """[MATCH, n]: box resize of n samples to 2*MATCH, Gaussian (sigma MATCH_SIGMA, edges
    repeated), then pairs averaged, as one matrix (the three steps are linear and separable)."""
    from scipy.ndimage import gaussian_filter1d

    box = _resize_grey(np.eye(n, dtype=np.float32), n, 2 * MATCH)  # [2*MATCH, n]
    gauss = gaussian_filter1d(np.eye(2 * MATCH), MATCH_SIGMA, axis=0, mode="nearest")
    pairs = np.kron(np.eye(MATCH), np.full((1, 2), 0.5))
    return (pairs @ gauss @ box).astype(np.float32)


def match_image(g: np.ndarray) -> np.ndarray:
    """MATCH x MATCH uint8 grey copy that near-duplicates are confirmed on: box-resized to
    2*MATCH, Gaussian-smoothed (sigma MATCH_SIGMA px there, ~1.5 px of a 64 px image), then
    2x2-averaged (`_match_operator`: two small matrix products, ~20 us). Band-limited, so a
    shift of a fraction of its pixel (a 1-px shift of a 64 px image is 0.5 of them) changes it
    by ~shift x gradient, which the linearised alignment removes, whatever the texture; at
    32x32 it keeps twice the thumbnail's detail per side to tell low-detail crops apart."""
    h, w = g.shape
    m = _match_operator(h) @ g.astype(np.float32) @ _match_operator(w).T
    return np.clip(m, 0, 255).round().astype(np.uint8)


def sharpness(g: np.ndarray, rgb: bool) -> float:
    """Fine detail relative to edges: rms Laplacian / rms gradient, both on the pixels whose
    3x3 neighbourhood lies inside one 8x8 block of the grid JPEG codes on, with the image's
    own noise floor (less a 20% margin) taken off the Laplacian.

    ~1 for a sharp image; a blur of sigma s px drops it to ~1/s (the Laplacian falls faster
    than the gradient); contrast cancels out. JPEG's block seams are left out (they add fine
    detail to a blurred image; a plain std(Laplacian) read a blurred JPEG as sharp).

    Noise floor: 8-bit rounding alone gives a Laplacian variance of 20/12 per grey level
    (0.745 for luma of RGB), but a decoded JPEG carries more (its Y and RGB roundings and
    quantisation: 1.5-6 in blurred 64 px JPEGs), and on a low-contrast texture (moon, brick,
    gravel blurred to contrast < 15) that noise read as fine detail: 27% of such blurred JPEGs
    passed as sharp. So the floor is estimated from the image itself: M = d2/dx2 d2/dy2 (the
    3x3 mixed second difference) passes pixel noise (white noise: E[M^2] = 36 var, the
    Laplacian's 20 var) but next to nothing of smooth shading or of a straight edge, so
    20/36 mean(M^2) is the Laplacian variance white noise as strong would give. Measured
    on blurred JPEGs, where the Laplacian is mostly noise, var(Laplacian) / mean(M^2) is
    0.61-0.83, so 20/36 under- rather than over-estimates the floor (a sharp image's M also
    carries some of its detail, which a larger factor strips: 0.6-0.65 flagged 2-6x more
    clean images). And 20% of the floor is kept as detail: an estimate is not the floor, and
    an image with hardly more gradient than noise (grad variance ~ floor, a near-flat crop)
    would otherwise be called blurry on noise alone; so it scores >= sqrt(0.2) ~ 0.45 and
    is called blurry only when its Laplacian is clearly below the gradient's.

    On benchmarks/bench_data.py's 64 px crops (8000 clean, 1000-1500 blurred JPEGs, the
    flag's threshold 0.55): blur recall 73.7% -> 84.1%, clean flagged 0.23% -> 0.14% (15
    photos); 89.6% -> 90.5%, 0.30% -> 0.10% (3 photos). Subtracting the whole floor (none
    kept) found more (92.5%, 95%) but flagged 0.5% and 1.4% of clean images (near-flat crops);
    no verdict below gradient variance = floor did as well as this but left 15-24% of clean
    images unscored."""
    h, w = g.shape
    if min(h, w) < 3:
        return float("nan")
    dyy = g[:-2] - 2.0 * g[1:-1] + g[2:]  # (h-2, w)
    dxx = g[:, :-2] - 2.0 * g[:, 1:-1] + g[:, 2:]  # (h, w-2)
    lap = dyy[:, 1:-1] + dxx[1:-1]
    mixed = dyy[:, :-2] - 2.0 * dyy[:, 1:-1] + dyy[:, 2:]  # M = d2/dx2 d2/dy2
    gx, gy = (g[1:-1, 2:] - g[1:-1, :-2]) / 2, (g[2:, 1:-1] - g[:-2, 1:-1]) / 2
    inside = [(np.arange(1, n - 1) % 8 >= 1) & (np.arange(1, n - 1) % 8 <= 6) for n in (h, w)]
    m = inside[0][:, None] & inside[1][None]
    if m.sum() < 16:  # a tiny image: every pixel counts
        m = np.ones_like(m)
    rounding = 0.745 if rgb else 20.0 / 12.0
    noise = max(rounding, 20.0 / 36.0 * float(np.mean(mixed[m] ** 2)))
    grad_var = float((gx[m] ** 2 + gy[m] ** 2).mean())
    if grad_var < 1e-6:
        return 0.0
    return math.sqrt((max(float(lap[m].var()) - noise, 0.0) + 0.2 * noise) / grad_var)


# blur that leaves mostly noise: a detailed texture blurred by 3-5 px is near flat at 64 px,
# its Laplacian hardly above the noise floor, so `sharpness` reads noise, >= sqrt(0.2). The
# rms gradient carries 20x less of that noise than the Laplacian, and blur shows across scales
# (`falloff_sharpness`): judged only where the gradient is within FALLOFF_NOISE x the
# Laplacian's noise floor (where `sharpness` is noise), some coarse structure is left (the
# 1/4-scale gradient variance above FALLOFF_COARSE: not a flat crop) at a contrast under
# FALLOFF_CONTRAST (a strong blur of 64 px leaves little), and the spectrum falls faster at
# the fine scale than at the coarse one by FALLOFF_CURVE (a blur's Gaussian cut-off; a power
# law, as natural images and their smooth regions have, falls alike at both). Tuned on 1200
# clean and 1200 blurred 64 px photo crops and generated textures (benchmarks/bench_data.py's
# generators): without the curvature gate 20-40 clean smooth photo crops were flagged, with it
# none more than the Laplacian ratio flags; a radius-5 blur of a fine texture falls alike at
# both scales too (its curve 0.05-0.07) and is left to the Laplacian ratio
FALLOFF_NOISE, FALLOFF_COARSE, FALLOFF_CONTRAST, FALLOFF_CURVE = 5.0, 2.0, 15.0, 0.08


def _half(g: np.ndarray) -> np.ndarray:
    h, w = g.shape[0] // 2 * 2, g.shape[1] // 2 * 2
    g = g[:h, :w]
    return (g[0::2, 0::2] + g[1::2, 0::2] + g[0::2, 1::2] + g[1::2, 1::2]) / 4


def _grad_var(g: np.ndarray, m: Optional[np.ndarray] = None) -> float:
    gx, gy = (g[1:-1, 2:] - g[1:-1, :-2]) / 2, (g[2:, 1:-1] - g[:-2, 1:-1]) / 2
    v = gx**2 + gy**2
    return float((v[m] if m is not None else v).mean())


def falloff_sharpness(g: np.ndarray, rgb: bool, contrast: float) -> float:
    """How fast detail falls from 1/2 scale to full scale: rms gradient at full scale (less
    the noise's share, 1/20 of the Laplacian's floor as in `sharpness`) over rms gradient of
    the 2x2-averaged copy, in its own pixels. 0.5 for a smooth ramp or a strong blur, ~1 for a
    power-law (natural) texture at every scale; NaN where it is not a verdict (see
    FALLOFF_NOISE: only where `sharpness` reads noise and the fall-off curves like a blur's)."""
    h, w = g.shape
    if min(h, w) < 16 or not contrast < FALLOFF_CONTRAST:
        return float("nan")
    dyy = g[:-2] - 2.0 * g[1:-1] + g[2:]
    mixed = dyy[:, :-2] - 2.0 * dyy[:, 1:-1] + dyy[:, 2:]
    inside = [(np.arange(1, n - 1) % 8 >= 1) & (np.arange(1, n - 1) % 8 <= 6) for n in (h, w)]
    m = inside[0][:, None] & inside[1][None]
    floor = max(0.745 if rgb else 20.0 / 12.0, 20.0 / 36.0 * float(np.mean(mixed[m] ** 2)))
    g0 = _grad_var(g, m)
    g1 = _half(g)
    v1, v2 = _grad_var(g1), _grad_var(_half(g1))
    if g0 >= FALLOFF_NOISE * floor or v2 <= FALLOFF_COARSE or v1 <= 0:
        return float("nan")
    fine = math.sqrt(max(g0 - floor / 20.0, 0.0) / v1)
    if math.sqrt(v1 / v2) - fine <= FALLOFF_CURVE:
        return float("nan")
    return fine


def image_stats(img, analysis_size: int = 128) -> Tuple[Dict[str, Any], np.ndarray]:
    """Numbers a person would sort a dataset by, and a THUMBxTHUMB grey thumbnail.

    Size and mode come from the full image; the pixel statistics from a copy shrunk so its
    longer side is at most `analysis_size` (sharpness depends on scale, so it is measured at
    one scale for every image). brightness/contrast/p01/p99 are on the 0..255 luma scale;
    sharpness is `sharpness` (rms Laplacian / rms gradient, low for blurry images whatever
    their contrast or JPEG quality); colourfulness is the mean |R-G| + |G-B| (0 for grey
    images); `chroma` is `chroma_cells`, `match` is `match_image`, `cells` and `border`
    are `region_colours`.
    """
    from PIL import Image

    a, mode = to_array(img)
    h, w = a.shape[:2]
    pixel_hash = hashlib.sha1(f"{mode}{w}x{h}".encode() + a.tobytes()).hexdigest()[:16]
    if max(h, w) > analysis_size:
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        im.thumbnail((analysis_size, analysis_size), Image.BILINEAR)
        a = np.asarray(im)
        if a.ndim == 2:
            a = a[..., None]
    g = _luma(a)
    std = float(g.std())
    sharp = sharpness(g, a.shape[-1] == 3)
    falloff = falloff_sharpness(g, a.shape[-1] == 3, std)
    hist = np.bincount(np.clip(g + 0.5, 0, 255).astype(np.uint8).ravel(), minlength=256)
    cdf = np.cumsum(hist) / hist.sum()
    p = hist[hist > 0] / hist.sum()
    if a.shape[-1] == 3:
        af = a.astype(np.int16)
        colour = float(np.mean(np.abs(af[..., 0] - af[..., 1]) + np.abs(af[..., 1] - af[..., 2])))
    else:
        colour = 0.0
    p01, p99 = float(np.searchsorted(cdf, 0.01)), float(np.searchsorted(cdf, 0.99))
    cells, border = region_colours(a)
    row = {
        "width": int(w),
        "height": int(h),
        "mode": mode,
        "channels": int(a.shape[-1]),
        "brightness": float(g.mean()),
        "contrast": std,
        "p01": p01,
        "p99": p99,
        "sharpness": sharp,
        "falloff_sharpness": falloff,
        "entropy": float(abs((p * np.log2(p)).sum())),
        "colourfulness": colour,
        "phash": phash(g),
        "chroma": chroma_cells(a),
        "match": match_image(g),
        "cells": cells,
        "border": border,
        "pixel_hash": pixel_hash,
    }
    thumb = np.clip(_resize_grey(g, THUMB, THUMB), 0, 255).round().astype(np.uint8)
    return row, thumb


# ----------------------------------------------------------------------------- the table
SPLITS = ("train", "val", "test")
# the split pairs leakage is looked for across: the later split's image has a copy in the earlier
LEAK_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))


def leak_pair(p: Dict[str, Any]) -> Tuple[int, int]:
    """(the earlier split's image, the later split's image) of a leakage pair: a pair is
    {<split a>: index, <split b>: index, "pair": "a-b", "kind", "hash_distance"}."""
    a, b = str(p.get("pair") or "train-val").split("-")
    return int(p[a]), int(p[b])


@dataclass
class ImageTable:
    """One row per image of both splits, as numpy columns (bounded memory for 100k+ images).

    `label` indexes `class_names`; `split` indexes SPLITS; `ok` is false for an image that
    could not be read (its `error` says why, its statistics are NaN). `content_hash` is the
    file bytes' hash for files and the pixels' hash for in-memory images. `phash`, `thumbs`,
    `chroma` and `match` are what near-duplicates are found by (`near_pairs`); `thumbs` is
    also what the report draws and the label check learns from.
    """

    class_names: List[str]
    split: np.ndarray
    label: np.ndarray
    name: List[str]
    ok: np.ndarray
    error: List[str]
    mode: List[str]
    content_hash: List[str]
    phash: np.ndarray
    thumbs: np.ndarray
    chroma: np.ndarray
    match: np.ndarray
    # data.label_in_pixels' region colours (`region_colours`); zeros for rows built without
    cells: Optional[np.ndarray] = None
    border: Optional[np.ndarray] = None
    num: Dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int, class_names: Sequence[str]) -> "ImageTable":
        return cls(
            class_names=list(class_names),
            split=np.zeros(n, np.int8),
            label=np.full(n, -1, np.int32),
            name=[""] * n,
            ok=np.zeros(n, bool),
            error=[""] * n,
            mode=[""] * n,
            content_hash=[""] * n,
            phash=np.zeros(n, np.uint64),
            thumbs=np.zeros((n, THUMB, THUMB), np.uint8),
            chroma=np.full((n, CHROMA, CHROMA, 2), 128, np.uint8),
            match=np.zeros((n, MATCH, MATCH), np.uint8),
            cells=np.zeros((n, CELLS, CELLS, 3), np.uint8),
            border=np.zeros((n, 4, 4), np.float32),
            num={k: np.full(n, np.nan) for k in NUMERIC_COLUMNS},
        )

    def __len__(self) -> int:
        return len(self.name)

    def set_row(
        self,
        i: int,
        split: int,
        label: int,
        name: str,
        row: Optional[Dict[str, Any]],
        thumb: Optional[np.ndarray],
        error: str = "",
        content_hash: str = "",
    ) -> None:
        self.split[i], self.label[i], self.name[i] = split, label, name
        if row is None:
            self.ok[i], self.error[i] = False, error or "unreadable"
            return
        self.ok[i] = True
        self.mode[i] = row["mode"]
        self.content_hash[i] = content_hash or row["pixel_hash"]
        self.phash[i] = np.uint64(row["phash"])
        self.thumbs[i] = thumb
        if "chroma" in row:
            self.chroma[i] = row["chroma"]
        if "cells" in row and self.cells is not None:
            self.cells[i], self.border[i] = row["cells"], row["border"]
        # a row without one (built by hand) matches on its thumbnail, scaled up
        up = np.ones((MATCH // THUMB, MATCH // THUMB), np.uint8)
        self.match[i] = row["match"] if "match" in row else np.kron(thumb, up)
        for k in NUMERIC_COLUMNS:
            if k in row:
                self.num[k][i] = row[k]

    def describe(self, i: int) -> Dict[str, Any]:
        """Where image i lives, for lists in checks.json and the report."""
        c = int(self.label[i])
        return {
            "index": int(i),
            "split": SPLITS[int(self.split[i])],
            "name": self.name[i],
            "class": self.class_names[c] if 0 <= c < len(self.class_names) else None,
        }

    def columns(self) -> Dict[str, List[Any]]:
        """images.csv as columns (no per-row dicts: cheap for 100k+ images)."""
        ints = ("width", "height", "channels", "file_bytes")
        cols: Dict[str, List[Any]] = {
            "index": list(range(len(self))),
            "split": [SPLITS[int(s)] for s in self.split],
            "name": list(self.name),
            "class": [
                self.class_names[c] if 0 <= c < len(self.class_names) else ""
                for c in self.label.tolist()
            ],
            "ok": self.ok.tolist(),
            "error": list(self.error),
            "mode": list(self.mode),
            "content_hash": list(self.content_hash),
            "phash": [
                f"{int(h):016x}" if ok else ""
                for h, ok in zip(self.phash.tolist(), self.ok.tolist())
            ],
        }
        for k, col in self.num.items():
            cols[k] = [
                "" if not math.isfinite(v) else (int(v) if k in ints else round(v, 4))
                for v in col.tolist()
            ]
        return cols


# ----------------------------------------------------------------------------- helpers
def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / scale, scale = 1.4826 * MAD; when over half the values are equal (MAD = 0)
    the mean absolute deviation stands in, so a few odd values still stand out but a
    two-valued feature (60% one size, 40% another) does not."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    z = np.zeros_like(x)
    if finite.sum() < 3:
        return z
    med = np.median(x[finite])
    dev = np.abs(x[finite] - med)
    scale = 1.4826 * np.median(dev)
    if scale <= 1e-12:
        scale = 1.2533 * dev.mean()
    if scale <= 1e-12:
        return z
    z[finite] = (x[finite] - med) / scale
    return z


class _UnionFind:
    def __init__(self):
        self.parent: Dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> List[List[int]]:
        out: Dict[int, List[int]] = {}
        for a in self.parent:
            out.setdefault(self.find(a), []).append(a)
        groups = [sorted(g) for g in out.values() if len(g) > 1]
        return sorted(groups, key=lambda g: (-len(g), g[0]))


def _exact_groups(table: ImageTable) -> List[List[int]]:
    by_hash: Dict[str, List[int]] = {}
    for i in np.flatnonzero(table.ok):
        by_hash.setdefault(table.content_hash[i], []).append(int(i))
    return [g for g in by_hash.values() if len(g) > 1]


# near-duplicates: a pair is confirmed when, after the best small shift/zoom, the match
# images (`match_image`) differ by at most `thumb_distance` AND by at most this fraction of
# the image's own detail, measured as its rms gradient (+1 grey level for 8-bit rounding).
# The gradient, not the std, is the scale of a misalignment: shifting an image by d pixels
# changes it by ~d x gradient, so a copy's residual after alignment is a small fraction of
# it whatever the content, while two different views leave a residual of the order of the
# displacement the alignment cannot absorb times the gradient. The std was lenient exactly
# where the false alarms were: smooth crops (a portrait's cheek, a dark or sky ramp) have a
# large std but small gradients. Measured on the candidate pairs of 20k and 100k real-photo
# crops (benchmarks/bench_data.py; 3 photos, and 15 with textures, a night sky and grey
# photos): re-encodes leave a median 0.016 (p99 0.11-0.15), 1-px shifts of a 64 px photo
# 0.05 (p95 0.09-0.11, p99 0.13-0.17), crops of 2-4% 0.05 (p95 0.12); two different crops
# that the hash search paired (same low-frequency layout and brightness) 0.18-0.36 at their
# p0.1 and > 1 at their median. (On the std, at 100k the two overlapped: no threshold kept
# both 1-px shifts >= 90% and false alarms <= 0.1%.)
NEAR_RELATIVE = 0.16
# ... and their colour cells (`chroma_cells`) differ by at most this mean |a-b|: re-encodes and
# shifts move them by < 1, a different patch of the same blue sky or green lawn by several
NEAR_COLOUR = 3.0
# shift tolerance of the confirmation: up to this many match-image pixels (1 pixel = 1/32 of
# the image: a 1-px shift of a 64 px image is 0.5) and this much zoom (crops of a few %,
# resized back)
NEAR_MAX_SHIFT, NEAR_MAX_ZOOM = 1.0, 0.08


def aligned_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean |a - b| of grey images [P, T, T] (match images) after the best small shift and
    zoom (one linearised least-squares step on the pair's mean gradient, clamped to
    NEAR_MAX_SHIFT / NEAR_MAX_ZOOM), over the inner (T-2)^2 pixels, where a shift brings
    nothing in. The Jacobian is built in place and reduced by batched 3xK products (~24 us a
    pair at T=32): the confirmation runs on every candidate pair."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    p, t = len(a), a.shape[-1]
    s = a + b  # the central difference of the mean (a+b)/2 is diff(s) / 4
    jac = np.empty((p, 3, t - 2, t - 2), np.float32)  # d/dx, d/dy, d/dzoom
    np.subtract(s[:, 1:-1, 2:], s[:, 1:-1, :-2], out=jac[:, 0])
    np.subtract(s[:, 2:, 1:-1], s[:, :-2, 1:-1], out=jac[:, 1])
    jac[:, :2] *= 0.25
    c = np.arange(t - 2, dtype=np.float32) - (t - 3) / 2
    np.multiply(jac[:, 0], c[None, None, :], out=jac[:, 2])
    jac[:, 2] += jac[:, 1] * c[None, :, None]
    jac = jac.reshape(p, 3, -1)
    d = (b - a)[:, 1:-1, 1:-1].reshape(p, -1)
    jtj = np.matmul(jac, jac.transpose(0, 2, 1)) + 1e-3 * np.eye(3, dtype=np.float32)
    step = np.linalg.solve(jtj, np.matmul(jac, d[..., None]))[..., 0]
    step[:, :2] = np.clip(step[:, :2], -NEAR_MAX_SHIFT, NEAR_MAX_SHIFT)
    step[:, 2] = np.clip(step[:, 2], -NEAR_MAX_ZOOM, NEAR_MAX_ZOOM)
    d -= np.matmul(step[:, None, :], jac)[:, 0]
    return np.abs(d).mean(axis=1)


def _gradient_rms(x: np.ndarray) -> np.ndarray:
    """rms of the central-difference gradient over the inner pixels of images [P, T, T], in
    grey levels per pixel: the scale of what a small misalignment changes."""
    x = x.astype(np.float32)
    gx = (x[:, 1:-1, 2:] - x[:, 1:-1, :-2]) / 2
    gy = (x[:, 2:, 1:-1] - x[:, :-2, 1:-1]) / 2
    return np.sqrt((gx**2 + gy**2).mean(axis=(1, 2)))


_POP8 = np.array([bin(v).count("1") for v in range(256)], np.uint8)


def _popcount64(x: np.ndarray) -> np.ndarray:
    return (
        _POP8[np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8)]
        .reshape(-1, 8)
        .sum(axis=1, dtype=np.int64)
    )


def near_pairs(
    table: ImageTable,
    hash_distance: int,
    thumb_distance: float,
    window: int = 64,
    chunk: int = 200_000,
    relative: float = NEAR_RELATIVE,
    colour: float = NEAR_COLOUR,
    side: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Pairs (i < j) of readable images whose perceptual hashes differ in at most
    `hash_distance` bits and that `confirm_near` accepts (thumbnails within `thumb_distance`
    mean |a-b| and `relative` of their detail after a small shift/zoom; colour cells within
    `colour`).

    Candidates come from splitting the 64-bit hash into hash_distance+1 bands: two hashes
    within that distance agree exactly on at least one band (pigeonhole). Per band the images
    are sorted by (band, thumbnail brightness) and each is compared with its next `window`
    images sharing the band: a copy has nearly the same brightness, so it sits within the
    window even in a crowd (thousands of blank images, or 100k images over few band values).
    Work: N x window x (hash_distance+1) hash comparisons, never N^2. Exact duplicates are
    represented by one member (they are reported as exact). `side` (bool per image): only
    pairs with one image on each side are candidates. Returns int64 [P, 3] of
    (i, j, hamming distance).
    """
    reps: Dict[str, int] = {}
    for i in np.flatnonzero(table.ok):
        reps.setdefault(table.content_hash[i], int(i))
    idx = np.array(sorted(reps.values()), dtype=np.int64)
    if len(idx) < 2:
        return np.zeros((0, 3), np.int64)
    h = table.phash[idx]
    sides = None if side is None else np.asarray(side, bool)[idx]
    level = table.thumbs[idx].reshape(len(idx), -1).mean(axis=1)
    edges = np.linspace(0, 64, hash_distance + 2).round().astype(int)
    found = []
    cand_a: List[np.ndarray] = []
    cand_b: List[np.ndarray] = []
    pending = [0]
    seen = [np.zeros(0, np.int64)]  # pairs already confirmed: each is confirmed once

    def flush() -> None:
        if not cand_a:
            return
        a, b = np.concatenate(cand_a), np.concatenate(cand_b)
        cand_a.clear(), cand_b.clear()
        pending[0] = 0
        key = np.unique(np.minimum(a, b) * len(idx) + np.maximum(a, b))
        key = key[~np.isin(key, seen[0], assume_unique=True)]
        seen[0] = np.union1d(seen[0], key)
        a, b = key // len(idx), key % len(idx)
        i, j = idx[a], idx[b]
        keep = confirm_near(table, i, j, thumb_distance, relative, colour)
        dist = _popcount64(table.phash[i[keep]] ^ table.phash[j[keep]])
        found.append(np.stack([i[keep], j[keep], dist], 1))

    for lo, hi in zip(edges[:-1], edges[1:]):
        key = (h >> np.uint64(64 - hi)) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.lexsort((level, key))
        k = key[order]
        for d in range(1, window + 1):  # runs of equal keys are contiguous in this order
            same = k[d:] == k[:-d]
            if not same.any():
                break
            a, b = order[:-d][same], order[d:][same]
            if sides is not None:
                a, b = a[sides[a] != sides[b]], b[sides[a] != sides[b]]
            close = _popcount64(h[a] ^ h[b]) <= hash_distance
            cand_a.append(a[close])
            cand_b.append(b[close])
            pending[0] += int(close.sum())
            if pending[0] >= chunk:
                flush()
    flush()
    pairs = np.concatenate(found) if found else np.zeros((0, 3), np.int64)
    if not len(pairs):
        return pairs.astype(np.int64)
    _, first = np.unique(pairs[:, 0] * len(table) + pairs[:, 1], return_index=True)
    return pairs[np.sort(first)].astype(np.int64)


def confirm_near(
    table: ImageTable,
    i: np.ndarray,
    j: np.ndarray,
    thumb_distance: float,
    relative: float = NEAR_RELATIVE,
    colour: float = NEAR_COLOUR,
    chunk: int = 5_000,
) -> np.ndarray:
    """Which candidate pairs (i[k], j[k]) are near-duplicates (boolean mask): shift/zoom-aligned
    match images (`match_image`) within `thumb_distance` and within `relative` x (detail + 1),
    detail being the smaller rms gradient of the two (`_gradient_rms`); colour cells within
    `colour`."""
    keep = np.zeros(len(i), bool)
    for lo in range(0, len(i), chunk):
        ii, jj = i[lo : lo + chunk], j[lo : lo + chunk]
        cd = np.abs(table.chroma[ii].astype(np.int16) - table.chroma[jj]).mean(axis=(1, 2, 3))
        ok = cd <= colour
        if not ok.any():
            continue
        ta, tb = table.match[ii[ok]], table.match[jj[ok]]
        td = aligned_distance(ta, tb)
        detail = np.minimum(_gradient_rms(ta), _gradient_rms(tb))
        sub = (td <= thumb_distance) & (td <= relative * (detail + 1.0))
        keep[lo + np.flatnonzero(ok)[sub]] = True
    return keep


# ----------------------------------------------------------------------------- augmented copies
def _rot(k: int):
    return lambda x: np.rot90(x, k, axes=(-2, -1))


def _transpose(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


# what an offline augmentation did to the earlier split's image to make the later split's copy
# (the dihedral group less the identity; rotations counter-clockwise) -> what undoes it, on
# [..., H, W] arrays. The match image (`match_image`) is a square resize made by the same 1-D
# operator on both axes, so undoing on it equals matching the undone image, at any aspect.
AUGMENTATIONS = {
    "hflip": lambda x: x[..., ::-1],
    "vflip": lambda x: x[..., ::-1, :],
    "rot90": _rot(-1),
    "rot180": _rot(2),
    "rot270": _rot(1),
    "transpose": _transpose,
    "antitranspose": lambda x: _rot(2)(_transpose(x)),
}


def match_hash(m: np.ndarray) -> np.ndarray:
    """64-bit perceptual hashes (`phash`'s rule: signs against their median of the 8x8 lowest
    DCT frequencies) of match images [N, T, T], as uint64 [N]: the hash of any flipped or
    rotated variant is then one array operation and one DCT away, with no image decoded again."""
    from scipy.fft import dctn

    if not len(m):
        return np.zeros(0, np.uint64)
    c = dctn(m.astype(np.float64), axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(m), 64)
    bits = c > np.median(c[:, 1:], axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


# zooms the earlier split's image is also matched at (its centre 1/z of each side, resized
# back: what a crop of the copy took off): the hash search tolerates ~3% of zoom and the
# alignment NEAR_MAX_ZOOM more, so 1.05 reaches crops of ~2-9% that data.leakage can miss
AUGMENT_ZOOMS = (1.0, 1.05)


@lru_cache(maxsize=64)
def _zoom_operator(n: int, z: float) -> np.ndarray:
    """[n, n] bilinear resampling of n samples' centre 1/z (a zoom by z about the centre)."""
    c = (n - 1) / 2
    src = np.clip((np.arange(n) - c) / z + c, 0, n - 1)
    lo = np.minimum(np.floor(src).astype(int), n - 2)
    w = (src - lo).astype(np.float32)
    op = np.zeros((n, n), np.float32)
    op[np.arange(n), lo] = 1 - w
    op[np.arange(n), lo + 1] += w
    return op


def _zoomed(x: np.ndarray, z: float) -> np.ndarray:
    """uint8 images [N, H, W] zoomed by z about their centres."""
    if z == 1.0:
        return x
    zy, zx = _zoom_operator(x.shape[-2], z), _zoom_operator(x.shape[-1], z)
    return np.clip(zy @ x.astype(np.float32) @ zx.T, 0, 255).round().astype(np.uint8)


def augmented_pairs(
    table: ImageTable,
    leaks: Sequence[Dict[str, Any]],
    hash_distance: int,
    thumb_distance: float,
    margin: float,
    window: int = 64,
) -> List[Dict[str, Any]]:
    """Later-split images that are a flipped, rotated or slightly cropped copy of an earlier
    split's image: [{<earlier split>: index, <later split>: index, "pair", "transform",
    "zoom", "distance", "identity_distance", "hash_distance"}], one per later-split image and
    split pair (the closest match). `transform` is what made the copy: one of AUGMENTATIONS,
    "+crop" when it was also cropped, or "crop" alone.

    Each later image is undone by every transform in AUGMENTATIONS (its match image, thumbnail
    and colour cells flipped or rotated) and searched against the earlier splits' images at
    each zoom of AUGMENT_ZOOMS, with `near_pairs`' banded hash search and `confirm_near`'s
    aligned distance. Copies `data.leakage` found (`leaks`) are left to it. A flip or rotation
    counts only when the undone copy is closer than `margin` x the two images as they are: an
    image that equals its own mirror matches a copy of itself under a flip as well as under
    the identity, and that copy is an exact or near copy, not an augmented one.
    Work: one search per zoom over the earlier images and every undone variant of the later
    ones (8x their number), only pairs across the two confirmed."""
    order = {s: si for si, s in enumerate(SPLITS)}
    ok = table.ok
    early = np.flatnonzero(ok & (table.split < order["test"]))
    late = np.flatnonzero(ok & (table.split > order["train"]))
    if not len(early) or not len(late):
        return []
    known = {(str(p.get("pair") or "train-val"), leak_pair(p)[1]) for p in leaks}
    n_e, n_l = len(early), len(late)
    undo_all = {"identity": lambda x: x, **AUGMENTATIONS}
    best: Dict[Tuple[str, int], Dict[str, Any]] = {}
    # the later images' arrays, read once: each variant below is a view of them
    m_late, t_late = table.match[late], table.thumbs[late]
    chroma_late = np.moveaxis(table.chroma[late], -1, 1)  # [N, 2, cells, cells]
    hashes_late = [table.content_hash[i] for i in late]
    for z in AUGMENT_ZOOMS:
        # one search per zoom: the earlier images as they are (zoomed), then every undone
        # variant of the later ones, only pairs across the two sides confirmed
        names = [k for k in undo_all if not (k == "identity" and z == 1.0)]  # data.leakage's
        sub = ImageTable.empty(n_e + len(names) * n_l, table.class_names)
        sub.ok[:] = True
        sub.match[:n_e] = _zoomed(table.match[early], z)
        sub.thumbs[:n_e] = _zoomed(table.thumbs[early], z)
        sub.chroma[:n_e] = table.chroma[early]
        sub.content_hash = [table.content_hash[i] for i in early]
        for k, name in enumerate(names):
            undo, rows = undo_all[name], slice(n_e + k * n_l, n_e + (k + 1) * n_l)
            sub.match[rows] = undo(m_late)
            sub.thumbs[rows] = undo(t_late)
            sub.chroma[rows] = np.moveaxis(undo(chroma_late), 1, -1)
            sub.content_hash += [f"{h}:{name}" for h in hashes_late]
        sub.phash = match_hash(sub.match)
        side = np.arange(len(sub)) >= n_e
        found = near_pairs(sub, hash_distance, thumb_distance, window, side=side)
        found = found[(found[:, 0] < n_e) & (found[:, 1] >= n_e)]
        t, v = early[found[:, 0]], late[(found[:, 1] - n_e) % n_l]
        which = (found[:, 1] - n_e) // n_l
        cross = table.split[t] < table.split[v]
        found, t, v, which = found[cross], t[cross], v[cross], which[cross]
        if not len(found):
            continue
        d = aligned_distance(sub.match[found[:, 0]], sub.match[found[:, 1]])
        # the two as they are, at this zoom and at none: the reference a flip must beat
        d_id = aligned_distance(table.match[t], table.match[v])
        if z != 1.0:  # at zoom 1 the zoomed earlier image is the image itself
            d_id = np.minimum(d_id, aligned_distance(sub.match[found[:, 0]], table.match[v]))
        for ti, vi, wi, di, dii, hd in zip(t, v, which, d, d_id, found[:, 2]):
            name = names[int(wi)]
            pair = f"{SPLITS[int(table.split[ti])]}-{SPLITS[int(table.split[vi])]}"
            key = (pair, int(vi))
            if key in known or (name != "identity" and di >= margin * dii):
                continue
            if key not in best or di < best[key]["distance"]:
                a, b = pair.split("-")
                what = "crop" if name == "identity" else name + ("+crop" if z != 1 else "")
                best[key] = {
                    a: int(ti),
                    b: int(vi),
                    "pair": pair,
                    "transform": what,
                    "zoom": z,
                    "distance": round(float(di), 3),
                    "identity_distance": round(float(dii), 3),
                    "hash_distance": int(hd),
                }
    return sorted(
        best.values(), key=lambda p: (SPLITS.index(p["pair"].split("-")[1]), leak_pair(p)[1])
    )


def _listed(table: ImageTable, idx: Sequence[int], limit: int) -> List[Dict[str, Any]]:
    return [table.describe(int(i)) for i in list(idx)[:limit]]


def _more(n: int, limit: int) -> str:
    return f" (first {limit} listed)" if n > limit else ""


# ----------------------------------------------------------------------------- checks
def corrupt(table: ImageTable, max_listed: int = 50) -> Verdict:
    """data.corrupt: files that cannot be opened or decoded (listed by path, with the error)."""
    bad = np.flatnonzero(~table.ok)
    files = [dict(table.describe(int(i)), error=table.error[i]) for i in bad[:max_listed]]
    if len(bad):
        examples = ", ".join(f"{f['name']} ({f['error']})" for f in files[:3])
        return Verdict(
            "data.corrupt",
            "fail",
            value=int(len(bad)),
            expected="0 unreadable images",
            message=f"{len(bad)} of {len(table)} images cannot be read"
            f"{_more(len(bad), max_listed)}: {examples}"
            f"{'...' if len(bad) > 3 else ''}; training skips them, but fix "
            "or remove them",
            details={"files": files, "count": int(len(bad))},
        )
    return Verdict(
        "data.corrupt",
        "pass",
        value=0,
        expected="0 unreadable images",
        message=f"all {len(table)} images decode",
    )


def class_balance(
    table: ImageTable, imbalance_ratio: float = 10.0, split_shift_tv: float = 0.2
) -> Verdict:
    """data.class_balance: counts per class and split (unreadable files count: they are there).

    fail: a class with no images at all, or present in only one split (it cannot be learnt,
    or cannot be evaluated). warn: the largest class in train has more than `imbalance_ratio`
    times the images of the smallest, or val's class proportions differ from train's by more
    than `split_shift_tv` (total variation distance)."""
    names = table.class_names
    k = len(names)
    counts = {
        s: np.bincount(table.label[(table.split == si) & (table.label >= 0)], minlength=k)[:k]
        for si, s in enumerate(SPLITS)
    }
    present = [s for s in SPLITS if counts[s].sum() > 0]
    # train and val always; test when the data has a test split
    shown = [s for s in SPLITS if s != "test" or counts[s].sum() > 0]
    per_class = {names[c]: {s: int(counts[s][c]) for s in shown} for c in range(k)}
    totals = {s: int(counts[s].sum()) for s in SPLITS}
    details: Dict[str, Any] = {
        "counts": per_class,
        "totals": {s: totals[s] for s in shown},
    }
    problems, warnings = [], []
    empty = [names[c] for c in range(k) if all(counts[s][c] == 0 for s in SPLITS)]
    if empty:
        problems.append(f"{len(empty)} empty class(es) with no images: {', '.join(empty[:10])}")
    if len(present) >= 2:
        one = []
        for c in range(k):
            has = [s for s in present if counts[s][c]]
            if has and len(has) < len(present):
                one.append(f"{names[c]} (only in {', '.join(has)})")
        if one:
            problems.append(
                f"{len(one)} class(es) present in only one split: {', '.join(one[:10])}"
            )
    # imbalance is judged on train (what the model learns from), or the one split there is
    tr = counts[present[0]] if present and not totals["train"] else counts["train"]
    nonzero = tr[tr > 0]
    ratio = float(nonzero.max() / nonzero.min()) if len(nonzero) else float("nan")
    details["imbalance_ratio"] = ratio
    if len(nonzero) and ratio > imbalance_ratio:
        big = names[int(np.argmax(tr))]
        small = names[int(np.argmin(np.where(tr > 0, tr, tr.max() + 1)))]
        warnings.append(
            f"strong imbalance: {big!r} has {ratio:.1f}x the training images of "
            f"{small!r} (> {imbalance_ratio:g}); accuracy will flatter a "
            "majority-class guess"
        )
    for other in ("val", "test"):
        if not (totals["train"] and totals[other]):
            continue
        p_tr = counts["train"] / counts["train"].sum()
        p_o = counts[other] / counts[other].sum()
        tv = float(0.5 * np.abs(p_tr - p_o).sum())
        details[f"train_{other}_tv"] = tv
        if tv > split_shift_tv:
            warnings.append(
                f"{other}'s class mix differs from train's (total variation {tv:.2f} > "
                f"{split_shift_tv:g}); {other} accuracy will not estimate accuracy on "
                "train's distribution"
            )
    summary = (
        f"{k} classes; train {totals['train']}, val {totals['val']}"
        + (f", test {totals['test']}" if totals["test"] else "")
        + f" images; largest/smallest train class {ratio:.2f}"
    )
    expected = f"every class in both splits; max/min <= {imbalance_ratio:g}"
    value = round(ratio, 3) if math.isfinite(ratio) else None
    if problems:
        return Verdict(
            "data.class_balance",
            "fail",
            value=value,
            expected=expected,
            message="; ".join(problems + warnings),
            details=details,
        )
    if warnings:
        return Verdict(
            "data.class_balance",
            "warn",
            value=value,
            expected=expected,
            message="; ".join(warnings) + f" ({summary})",
            details=details,
        )
    return Verdict(
        "data.class_balance",
        "pass",
        value=value,
        expected=expected,
        message=summary,
        details=details,
    )


def duplicate_groups(
    table: ImageTable, pairs: np.ndarray
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(groups inside one split, leakage pairs across splits) from exact hashes and near pairs.

    A group is {"kind": "exact"|"near", "split", "members": [index...], "labels_differ"}.
    A leakage pair is {<earlier split>: index, <later split>: index, "pair": "train-val" |
    "train-test" | "val-test", "kind", "hash_distance"} (`leak_pair`): one per later-split
    image and split pair."""
    groups, leaks = [], []
    seen_leak = set()  # (pair, the later split's image)
    order = {s: si for si, s in enumerate(SPLITS)}
    for g in _exact_groups(table):
        for si, s in enumerate(SPLITS):
            mem = [i for i in g if table.split[i] == si]
            if len(mem) > 1:
                groups.append(
                    {
                        "kind": "exact",
                        "split": s,
                        "members": mem,
                        "labels_differ": len({int(table.label[i]) for i in mem}) > 1,
                    }
                )
        for a, b in LEAK_PAIRS:
            early = [i for i in g if table.split[i] == order[a]]
            for v in (i for i in g if table.split[i] == order[b]):
                for t in early[:1]:  # one earlier twin per image is enough evidence
                    leaks.append(
                        {a: t, b: v, "pair": f"{a}-{b}", "kind": "exact", "hash_distance": 0}
                    )
                    seen_leak.add((f"{a}-{b}", v))
    # near pairs join exact groups' representatives; expand to the full exact groups
    members_of: Dict[str, List[int]] = {}
    for i in np.flatnonzero(table.ok):
        members_of.setdefault(table.content_hash[i], []).append(int(i))
    uf = {s: _UnionFind() for s in SPLITS}
    for i, j, d in pairs.tolist():
        for a in members_of[table.content_hash[i]]:
            for b in members_of[table.content_hash[j]]:
                sa, sb = int(table.split[a]), int(table.split[b])
                if sa == sb:
                    uf[SPLITS[sa]].union(a, b)
                else:
                    (st, t), (sv, v) = sorted([(sa, a), (sb, b)])
                    pair = f"{SPLITS[st]}-{SPLITS[sv]}"
                    if (pair, v) not in seen_leak:
                        leaks.append(
                            {
                                SPLITS[st]: t,
                                SPLITS[sv]: v,
                                "pair": pair,
                                "kind": "near",
                                "hash_distance": int(d),
                            }
                        )
                        seen_leak.add((pair, v))
    exact_sets = {frozenset(g["members"]) for g in groups}
    for s in SPLITS:
        for mem in uf[s].groups():
            if frozenset(mem) in exact_sets:
                continue  # near links only inside an exact group add nothing
            groups.append(
                {
                    "kind": "near",
                    "split": s,
                    "members": mem,
                    "labels_differ": len({int(table.label[i]) for i in mem}) > 1,
                }
            )
    groups.sort(key=lambda g: (-len(g["members"]), g["members"][0]))
    return groups, leaks


def duplicates(table: ImageTable, groups: List[Dict[str, Any]], max_listed: int = 50) -> Verdict:
    """data.duplicates: exact and near-duplicate groups inside a split (warn; the redundant
    copies over-weight some images and inflate val accuracy). Groups whose copies carry
    different labels are label noise and named first."""
    expected = "no duplicate images inside a split"
    if not groups:
        return Verdict(
            "data.duplicates",
            "pass",
            value=0,
            expected=expected,
            message=f"no exact or near duplicates among {int(table.ok.sum())} readable images",
        )
    extra = sum(len(g["members"]) - 1 for g in groups)
    n_exact = sum(g["kind"] == "exact" for g in groups)
    conflicting = [g for g in groups if g["labels_differ"]]
    listed = [
        {
            "kind": g["kind"],
            "split": g["split"],
            "labels_differ": g["labels_differ"],
            "members": [table.describe(i) for i in g["members"][:max_listed]],
        }
        for g in sorted(groups, key=lambda g: not g["labels_differ"])[:max_listed]
    ]
    msg = (
        f"{len(groups)} duplicate group(s) inside a split ({n_exact} exact, "
        f"{len(groups) - n_exact} near), {extra} redundant image(s)"
        f"{_more(len(groups), max_listed)}"
    )
    if conflicting:
        msg += f"; {len(conflicting)} group(s) carry different labels (label noise)"
    return Verdict(
        "data.duplicates",
        "warn",
        value=extra,
        expected=expected,
        message=msg,
        details={"groups": listed, "count_groups": len(groups), "count_redundant": extra},
    )


def leakage(
    table: ImageTable,
    leaks: List[Dict[str, Any]],
    max_listed: int = 50,
    overlap: Optional[Dict[str, List[str]]] = None,
) -> Verdict:
    """data.leakage: the same or near-same image in train and val, in train and test, or in
    val and test (fail: val, or test, then measures memory, not generalisation). Counted per
    split pair in `details["counts"]`. `overlap`: for data with groups (patient, session,
    camera), the groups found in two splits ({"train-val": [group, ...]}): also a fail, as the
    model can learn the group rather than the class, which no image comparison sees."""
    n_of = {s: int((table.split == si).sum()) for si, s in enumerate(SPLITS)}
    has_test = bool(n_of["test"])
    expected = "no val image also in train" + (
        ", no test image in train or val" if has_test else ""
    )
    if overlap is not None:
        expected += ", no group in two splits"
    if not n_of["val"] and not has_test:
        return Verdict("data.leakage", "skip", expected=expected, message="no val split to compare")
    pairs_present = [f"{a}-{b}" for a, b in LEAK_PAIRS if n_of[a] and n_of[b]]
    counts = {pr: sum(p.get("pair", "train-val") == pr for p in leaks) for pr in pairs_present}
    if overlap:
        return _group_leakage(overlap, leaks, counts, expected, max_listed)
    if not leaks:
        return Verdict(
            "data.leakage",
            "pass",
            value=0,
            expected=expected,
            message="no val image has an exact or near copy among the train images"
            + ("; no test image one among the train or val images" if has_test else ""),
            details={"counts": counts},
        )

    def described(p):
        a, b = str(p.get("pair") or "train-val").split("-")
        return {
            a: table.describe(p[a]),
            b: table.describe(p[b]),
            "pair": f"{a}-{b}",
            "kind": p["kind"],
            "hash_distance": p["hash_distance"],
        }

    pairs = [described(p) for p in leaks[:max_listed]]
    parts = []
    for pr, n in counts.items():
        if not n:
            continue
        a, b = pr.split("-")
        mine = [p for p in leaks if p.get("pair", "train-val") == pr]
        n_exact = sum(p["kind"] == "exact" for p in mine)
        parts.append(
            f"{n} of {n_of[b]} {b} images have a copy in {a} ({n_exact} exact, {n - n_exact} near)"
        )
    first = pairs[0]
    a, b = first["pair"].split("-")
    return Verdict(
        "data.leakage",
        "fail",
        value=len(leaks),
        expected=expected,
        message="; ".join(parts) + f"{_more(len(leaks), max_listed)}, e.g. "
        f"{first[b]['name']} ~ {first[a]['name']}; remove them from one split",
        details={"pairs": pairs, "count": len(leaks), "counts": counts},
    )


def _group_leakage(overlap, leaks, counts, expected, max_listed) -> Verdict:
    n = sum(len(v) for v in overlap.values())
    parts = [
        f"{len(v)} group(s) in both {pr.replace('-', ' and ')}, e.g. {', '.join(map(str, v[:3]))}"
        for pr, v in overlap.items()
    ]
    copies = f"; also {len(leaks)} image(s) with a copy in another split" if leaks else ""
    return Verdict(
        "data.leakage",
        "fail",
        value=n,
        expected=expected,
        message="; ".join(parts) + f"{copies}: the model can learn the group (patient, session, "
        "camera) instead of the class; split by group (drop the split column: the runner then "
        "carves val and test by group) or move these groups' rows into one split",
        details={
            "group_overlap": {pr: v[:max_listed] for pr, v in overlap.items()},
            "group_counts": {pr: len(v) for pr, v in overlap.items()},
            "count": len(leaks),
            "counts": counts,
        },
    )


def leakage_augmented(
    table: ImageTable, pairs: List[Dict[str, Any]], max_listed: int = 50
) -> Verdict:
    """data.leakage_augmented: a val (or test) image that is a mirrored or rotated copy of a
    train (or val) image, as offline augmentation followed by a split makes (fail, as
    data.leakage: the model has seen that image). `pairs` is `augmented_pairs`; each listed
    pair names the transform that turns the earlier split's image into the copy."""
    n_of = {s: int((table.split == si).sum()) for si, s in enumerate(SPLITS)}
    has_test = bool(n_of["test"])
    expected = "no val image a flipped or rotated train image" + (
        ", no test image one of a train or val image" if has_test else ""
    )
    if not n_of["val"] and not has_test:
        return Verdict(
            "data.leakage_augmented", "skip", expected=expected, message="no val split to compare"
        )
    present = [f"{a}-{b}" for a, b in LEAK_PAIRS if n_of[a] and n_of[b]]
    counts = {pr: sum(p["pair"] == pr for p in pairs) for pr in present}
    by_transform: Dict[str, int] = {}
    for p in pairs:
        by_transform[p["transform"]] = by_transform.get(p["transform"], 0) + 1
    details: Dict[str, Any] = {"counts": counts, "transforms": by_transform, "count": len(pairs)}
    if not pairs:
        return Verdict(
            "data.leakage_augmented",
            "pass",
            value=0,
            expected=expected,
            message=f"no later-split image is a {'/'.join(AUGMENTATIONS)} copy of an earlier "
            "split's image",
            details=details,
        )

    def described(p):
        a, b = p["pair"].split("-")
        return dict(p, **{a: table.describe(p[a]), b: table.describe(p[b])})

    details["pairs"] = [described(p) for p in pairs[:max_listed]]
    parts = []
    for pr, n in counts.items():
        if n:
            a, b = pr.split("-")
            parts.append(f"{n} of {n_of[b]} {b} images are a flipped/rotated copy of a {a} image")
    first = details["pairs"][0]
    a, b = first["pair"].split("-")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(by_transform.items(), key=lambda kv: -kv[1]))
    return Verdict(
        "data.leakage_augmented",
        "fail",
        value=len(pairs),
        expected=expected,
        message="; ".join(parts) + f" ({kinds}){_more(len(pairs), max_listed)}, e.g. "
        f"{first[b]['name']} = {first['transform']}({first[a]['name']}); augment after "
        "splitting, or remove them from one split",
        details=details,
    )


# contrast, area and aspect are scales: judged on a log scale, where their spread is symmetric
OUTLIER_FEATURES = ("brightness", "log_contrast", "log_area", "log_aspect")


def outlier_scores(table: ImageTable) -> Dict[str, np.ndarray]:
    """Robust z-scores of the features outliers are judged on (NaN-free; 0 for unreadable)."""
    n = table.num
    feats = {
        "brightness": n["brightness"],
        "log_contrast": np.log1p(n["contrast"]),
        "log_area": np.log(n["width"] * n["height"]),
        "log_aspect": np.log(n["width"] / n["height"]),
    }
    return {k: robust_z(v) for k, v in feats.items()}


def find_outliers(
    table: ImageTable, z_max: float = 5.0, rare_mode_fraction: float = 0.01
) -> List[Tuple[int, List[str]]]:
    """Images far from the rest on brightness, contrast, size or aspect ratio (robust z-score
    beyond `z_max`), or in a mode (RGB/L/RGBA/...) fewer than `rare_mode_fraction` of the
    images have: [(index, reasons)], most extreme first."""
    ok = table.ok
    z = outlier_scores(table)
    zs = np.stack([z[k] for k in OUTLIER_FEATURES], 1)
    modes = mode_counts(table)
    n_ok = int(ok.sum())
    rare = {m for m, c in modes.items() if c < rare_mode_fraction * n_ok}
    found = []
    for i in np.flatnonzero(ok):
        why = [
            f"{k} z={zs[i, f]:+.1f}"
            for f, k in enumerate(OUTLIER_FEATURES)
            if abs(zs[i, f]) > z_max
        ]
        if table.mode[i] in rare:
            why.append(f"mode {table.mode[i]} ({modes[table.mode[i]]} of {n_ok} images)")
        if why:
            # a rare mode sorts first: it is a categorical fact, not a matter of degree
            score = float(np.max(np.abs(zs[i]))) + (1e6 if table.mode[i] in rare else 0)
            found.append((score, int(i), why))
    found.sort(key=lambda t: -t[0])
    return [(i, why) for _, i, why in found]


def mode_counts(table: ImageTable) -> Dict[str, int]:
    modes: Dict[str, int] = {}
    for i in np.flatnonzero(table.ok):
        modes[table.mode[i]] = modes.get(table.mode[i], 0) + 1
    return dict(sorted(modes.items(), key=lambda kv: -kv[1]))


def outliers(
    table: ImageTable,
    found: List[Tuple[int, List[str]]],
    z_max: float = 5.0,
    rare_mode_fraction: float = 0.01,
    max_listed: int = 50,
) -> Verdict:
    """data.outliers: warn when `find_outliers` found any (look at them: outliers almost
    always reveal a data-quality or preprocessing bug)."""
    n_ok = int(table.ok.sum())
    expected = (
        f"|robust z| <= {z_max:g} on {', '.join(OUTLIER_FEATURES)}; "
        f"no mode under {rare_mode_fraction:.0%}"
    )
    details = {
        "modes": mode_counts(table),
        "count": len(found),
        "images": [dict(table.describe(i), why=w) for i, w in found[:max_listed]],
    }
    if not found:
        return Verdict(
            "data.outliers",
            "pass",
            value=0,
            expected=expected,
            message=f"no image of {n_ok} stands out on {', '.join(OUTLIER_FEATURES)} or mode",
            details=details,
        )
    i, why = found[0]
    return Verdict(
        "data.outliers",
        "warn",
        value=len(found),
        expected=expected,
        message=f"{len(found)} of {n_ok} images stand out"
        f"{_more(len(found), max_listed)}, "
        f"e.g. {table.name[i]}: {', '.join(why)}",
        details=details,
    )


def property_flags(
    table: ImageTable,
    dark_max: float = 32.0,
    bright_min: float = 223.0,
    blurry_max: float = 0.55,
    entropy_min: float = 1.0,
    low_contrast_max: float = 2.0,
    odd_size_factor: float = 3.0,
    odd_aspect_factor: float = 2.0,
    grayscale_tolerance: float = 1.0,
    blurry_falloff_max: float = 0.65,
) -> Dict[str, Tuple[np.ndarray, np.ndarray, str]]:
    """CleanVision-style flags: check name -> (boolean mask over images, score to sort the
    flagged ones by (most extreme first = ascending), the rule in words)."""
    n, ok = table.num, table.ok
    with np.errstate(invalid="ignore", divide="ignore"):
        side = np.sqrt(n["width"] * n["height"])
        aspect = np.log(n["width"] / n["height"])
        med_side = np.nanmedian(side[ok]) if ok.any() else np.nan
        med_aspect = np.nanmedian(aspect[ok]) if ok.any() else np.nan
        size_off = np.abs(np.log(side / med_side))
        aspect_off = np.abs(aspect - med_aspect)
        grey = ok & ((n["channels"] == 1) | (n["colourfulness"] < grayscale_tolerance))
        low_info = ok & ((n["entropy"] < entropy_min) | (n["contrast"] < low_contrast_max))
        colour_majority = grey.sum() < 0.5 * ok.sum()
        return {
            "data.dark": (
                ok & (n["p99"] < dark_max),
                n["p99"],
                f"99th-percentile brightness < {dark_max:g} of 255",
            ),
            "data.bright": (
                ok & (n["p01"] > bright_min),
                -n["p01"],
                f"1st-percentile brightness > {bright_min:g} of 255",
            ),
            "data.blurry": (
                ok
                & ~low_info
                & ((n["sharpness"] < blurry_max) | (n["falloff_sharpness"] < blurry_falloff_max)),
                np.fmin(n["sharpness"], n["falloff_sharpness"]),
                f"rms Laplacian / rms gradient < {blurry_max:g}, or where that is noise, "
                f"full- / half-scale rms gradient < {blurry_falloff_max:g}",
            ),
            "data.low_information": (
                low_info,
                n["entropy"],
                f"grey-level entropy < {entropy_min:g} bits or contrast < {low_contrast_max:g}",
            ),
            "data.odd_size": (
                ok & (size_off > math.log(odd_size_factor)),
                -size_off,
                f"side {odd_size_factor:g}x smaller or larger than the median ({med_side:.0f} px)"
                if np.isfinite(med_side)
                else "odd size",
            ),
            "data.odd_aspect": (
                ok & (aspect_off > math.log(odd_aspect_factor)),
                -aspect_off,
                f"aspect ratio {odd_aspect_factor:g}x off the median ({math.exp(med_aspect):.2f})"
                if np.isfinite(med_aspect)
                else "odd aspect",
            ),
            "data.grayscale": (
                grey & ~low_info if colour_majority else np.zeros_like(ok),
                n["colourfulness"],
                f"grey (1 channel, or mean |R-G|+|G-B| < {grayscale_tolerance:g}) "
                "while most images are in colour",
            ),
        }


def property_verdict(
    name: str,
    table: ImageTable,
    mask: np.ndarray,
    score: np.ndarray,
    rule: str,
    max_listed: int = 50,
) -> Verdict:
    """One flag as a verdict: warn when any image has the property, listing the most extreme."""
    idx = np.flatnonzero(mask)
    idx = idx[np.argsort(score[idx], kind="stable")]
    n_ok = int(table.ok.sum())
    what = name.split(".", 1)[1].replace("_", " ")
    details = {"rule": rule, "count": int(len(idx)), "images": _listed(table, idx, max_listed)}
    if not len(idx):
        return Verdict(
            name,
            "pass",
            value=0,
            expected=f"no image {what}: {rule}",
            message=f"no image of {n_ok} is {what}",
            details=details,
        )
    return Verdict(
        name,
        "warn",
        value=int(len(idx)),
        expected=f"no image {what}: {rule}",
        message=f"{len(idx)} of {n_ok} images are {what} "
        f"({len(idx) / max(n_ok, 1):.1%}; {rule})"
        f"{_more(len(idx), max_listed)}, e.g. {table.name[idx[0]]}",
        details=details,
    )
