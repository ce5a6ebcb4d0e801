"""Data checks at scale on real-photo crops (issue 16 item 7): precision, recall and time.

    pip install -e '.[bench]'   # scikit-image: its bundled photos, no download
    python benchmarks/bench_data.py --n 100000 --workers 2 [--photos basic]

Builds N clean 64 px images (random crops of bundled photos: with --photos all, the default,
15: scikit-learn's two sample images, matplotlib's grace_hopper.jpg and 12 of scikit-image's
(SKIMAGE_PHOTOS: scenes, faces, textures, a night sky, grey photos); with --photos basic, or
when scikit-image is missing (it says so), the first 3 only: many crops of few scenes, the
harder case for false alarms. Random side, position, rotation, flip; JPEG q75-95 or PNG; and
--textures of them, 25% by default, generated detailed textures: `texture_image`), splits
them 80/20 into train/val and plants, into val, copies of train images: JPEG re-encodes,
1-px shifts and crops of a few % (data.leakage); mirrored (h, v), rotated (90, 180), 5%
cropped and 3%-cropped-and-mirrored copies (data.leakage_augmented); plus strong blurs of
train images (Gaussian radius 3, 4, 5; JPEG or PNG), counted apart for smooth and detailed
sources (DETAILED). Every image is encoded and decoded as a file would be, then goes through
`image_stats` into an `ImageTable`, and the near-duplicate search, the flipped/rotated search
(`augmented_pairs`) and the blur flag run with stage=inspect's defaults
(runner.stages.inspect.settings(): checks.data_duplicates.*, checks.data_leakage_augmented.*).

Prints: recall per planted kind, clean images in any near-duplicate group or leak pair with
another clean image that is not the same view, or in a flipped/rotated pair with one not of
the same photo region (the false alarms: goal <= 0.1%), clean images flagged blurry (and by
the Laplacian ratio alone, the rule before 2026-12-07), and the seconds per phase (build = generate + encode + decode +
`image_stats`; near-duplicate search = `near_pairs`: ~N x window x bands hash comparisons
plus the confirmation of each candidate pair, so it grows with N and with the number of
real near-copies in the data).

Measured 2026-12-07 on 2 CPU cores shared with other jobs, --workers 2, scikit-image not
installed (so --photos basic), `--n 10000 --plant 1200` (100 of each planted kind):

    re-encodes / 1-px shifts / crops found (data.leakage)        98% / 97% / 88%
    hflip / vflip / rot90 / rot180 (data.leakage_augmented)       100% / 100% / 100% / 98%
    5% crop / 3% crop + hflip (either check)                      95% / 95%, none misnamed
    blur r3 / r4 / r5, smooth photo crops (detail < DETAILED)     67% / 53% / 50%  (12-15 each)
    blur r3 / r4 / r5, detailed photo crops                       100% / 100% / 100%
    blur r3 / r4 / r5, generated textures                         94% / 95% / 54%
      (the Laplacian ratio alone, textures:                       74% / 80% / 46%)
    clean flagged blurry                                          0.07% (alone: 0.04%)
    clean false near-duplicate / flipped-rotated matches          0.000% / 0.000%
    seconds: build 161, near-duplicate search 1.0, flipped/rotated search 11.2

(25 clean pairs the flipped/rotated search found are crops of one region of a photo at angles
the generator happened to draw a multiple of 90 degrees apart: real copies, not counted as
false alarms.) Still missed: blurs of smooth crops (a blurred sky is a sky) and radius-5 blurs
of fine textures, which at 64 px are as smooth at every scale as clean smooth photo regions
are: no rule that flagged them kept clean images under 0.1% (runner/checks/data.py
FALLOFF_*).

Measured 2026-11-30 on 2 CPU cores, --workers 2, one run after another with no other job
(1-minute load 0.38 before the first; later ones start at the previous run's own load);
re-encodes / 1-px shifts / crops found, blurred JPEGs flagged, clean false alarms, clean
flagged blurry, near-duplicate search seconds, build seconds:

    --n 20000 --photos all     96% / 99% / 96%, blur 85%, FA 0.000%, blurry 0.13%, 0.7 s, 29 s
    --n 20000 --photos basic   98% / 95% / 97%, blur 93%, FA 0.000%, blurry 0.08%, 0.7 s, 29 s
    --n 100000 --photos all    99% / 98% / 91%, blur 88%, FA 0.002%, blurry 0.11%, 3.8 s, 125 s
    --n 100000 --photos basic  99% / 96% / 89%, blur 89%, FA 0.019%, blurry 0.09%, 4.9 s, 132 s

(before the 32x32 match image, at 20k basic with this script's then --hash-distance 8
--thumb-distance 3: 98% / 42% / 59%, FA 0.275%). The search is ~linear: 5.4-6.1x the
seconds for 5x the images. The blur and blurry figures are from 2026-11-30's sharpness,
which takes each image's own noise floor (20/36 of its mean squared mixed second difference)
off the Laplacian (`runner.checks.data.sharpness`); before it, on the same images: blur
73% / 92% / 78% / 90%, blurry 0.25% / 0.26% / 0.22% / 0.28% (rows above, in order): JPEG
noise on low-contrast textures (moon, brick, gravel: contrast < 15 after the blur) read as
detail. It costs ~4% more per image in `image_stats` (0.536 vs 0.514 ms for 64 px crops).
(100 blurred JPEGs per run: +-3-4 points of noise; on 1000-1500 per set the basic set's
recall went 89.6% -> 90.5%.) Blur still missed: near-flat blurred crops (moon, rocket),
whose gradient is hardly above the noise.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from runner.checks import data as dc  # noqa: E402
from runner.stages.inspect import settings  # noqa: E402

SIZE = 64
# copies of a train image planted into val (leakage: data.leakage, data.leakage_augmented),
# then strong blurs (data.blurry), Gaussian radius 3, 4 and 5 px
COPIES = ("reencode", "shift1", "crop")
AUGMENTED = ("hflip", "vflip", "rot90", "rot180", "crop5", "hflip_crop")
BLURS = ("blur3", "blur4", "blur5")
PLANTED = COPIES + AUGMENTED + BLURS
# a blurred photo crop's source is "detailed" when its luma's rms gradient is at least this
# (grey levels per pixel at 64 px; the clean images' median is ~19): smooth ones are the
# sky-like tail, where a blur leaves an image that looks like any other smooth crop
DETAILED = 8.0


# scikit-image's bundled photos (the optional extra `bench`: pip install -e '.[bench]'):
# natural scenes, faces, textures (grass, gravel, brick), a night sky full of black
# (hubble_deep_field) and grey photos, so false alarms are measured on more than three
# scenes; motorcycle_right is left out (a stereo twin of motorcycle_left: real near-copies)
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "camera.png",
    "coins.png",
    "moon.png",
    "grass.png",
    "gravel.png",
    "brick.png",
)
_PHOTOS: dict = {}
BASIC = 3  # scikit-learn's two sample images and matplotlib's grace_hopper.jpg


def have_skimage() -> bool:
    try:
        import skimage  # noqa: F401
    except ImportError:
        return False
    return True


def photos(which: str = "all"):
    """The source photos as RGB arrays (cached per process): "basic" = scikit-learn's two
    sample images and matplotlib's grace_hopper.jpg; "all" = those and SKIMAGE_PHOTOS."""
    if which in _PHOTOS:
        return _PHOTOS[which]
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = list(load_sample_images().images)
    p = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    out.append(np.asarray(Image.open(p).convert("RGB")))
    if which == "all":
        import skimage

        d = os.path.join(os.path.dirname(skimage.__file__), "data")
        out += [np.asarray(Image.open(os.path.join(d, f)).convert("RGB")) for f in SKIMAGE_PHOTOS]
    _PHOTOS[which] = out
    return out


def clean_image(rng: np.random.Generator, ph, params: bool = False):
    """A random crop: side 64-256 px of the photo, any angle, maybe mirrored, resized to 64
    (with params=True also (photo, centre y, centre x, side, angle, mirrored))."""
    from PIL import Image

    k = int(rng.integers(len(ph)))
    p = ph[k]
    side = int(np.exp(rng.uniform(np.log(SIZE), np.log(min(256, min(p.shape[:2]) // 1.5)))))
    ext = int(side * 1.42) + 2  # room to rotate without empty corners
    y = int(rng.integers(0, p.shape[0] - ext + 1))
    x = int(rng.integers(0, p.shape[1] - ext + 1))
    angle = float(rng.uniform(0, 360))
    im = Image.fromarray(p[y : y + ext, x : x + ext]).rotate(angle, Image.BILINEAR)
    c = (ext - side) // 2
    im = im.crop((c, c, c + side, c + side)).resize((SIZE, SIZE), Image.BILINEAR)
    a = np.asarray(im)
    flip = rng.random() < 0.5
    a = a[:, ::-1] if flip else a
    return (a, (k, y + ext / 2, x + ext / 2, side, angle, flip)) if params else a


def texture_image(rng: np.random.Generator) -> np.ndarray:
    """A generated photo-like detailed texture, 64 px: fractal noise (power spectrum 1/f^beta,
    beta 1.6-2.6, as natural images have), gravel (blobs of 1-3 px) or grass (strokes at an
    angle), rendered at 128-200 px with a little sensor noise and area-resized to 64 as the
    photo crops are; random level, contrast and tint. Real photos of fine textures (skimage's
    grass, gravel, brick) are not always installed, and none can be downloaded."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    n = int(rng.integers(128, 200))
    kind = int(rng.integers(3))
    if kind == 0:
        beta = rng.uniform(1.6, 2.6)
        f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None])
        f[0, 0] = 1.0
        spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (beta / 2)
        spec[0, 0] = 0
        base = np.fft.irfft2(spec, (n, n))
    elif kind == 1:
        base = gaussian_filter(rng.normal(size=(n, n)), rng.uniform(0.8, 2.5))
    else:
        strokes = gaussian_filter(
            rng.normal(size=(n, n)), (rng.uniform(3, 8), rng.uniform(0.6, 1.5))
        ).astype(np.float32)
        base = np.asarray(Image.fromarray(strokes, "F").rotate(rng.uniform(0, 180), Image.BILINEAR))
    base = (base - base.mean()) / (base.std() + 1e-9)
    rgb = (
        rng.uniform(60, 190)
        + rng.uniform(15, 60) * base[..., None] * rng.uniform(0.6, 1.4, 3)
        + rng.normal(0, 1, (n, n, 3))
    )
    im = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.asarray(im.resize((SIZE, SIZE), Image.BILINEAR))


def same_region(p, q) -> bool:
    """Two clean crops of one region of a photo, at any angle or mirroring: centres within 15%
    of the side, sides within 15% (a real flipped/rotated copy when the angles differ by about
    a multiple of 90 degrees; counted apart from the false alarms)."""
    if p is None or q is None:
        return False
    (k1, y1, x1, s1, _, _), (k2, y2, x2, s2, _, _) = p, q
    return (
        k1 == k2 and np.hypot(y1 - y2, x1 - x2) < 0.15 * min(s1, s2) and abs(np.log(s1 / s2)) < 0.15
    )


def same_view(p, q) -> bool:
    """Two clean crops that show the same view (a real near-duplicate pair, by construction):
    same photo and mirroring, centres within 15% of the side, sides within 15%, angles
    within 15 degrees."""
    (k1, y1, x1, s1, a1, f1), (k2, y2, x2, s2, a2, f2) = p, q
    da = abs((a1 - a2 + 180) % 360 - 180)
    return (
        k1 == k2
        and f1 == f2
        and np.hypot(y1 - y2, x1 - x2) < 0.15 * min(s1, s2)
        and abs(np.log(s1 / s2)) < 0.15
        and da < 15
    )


def encode(a: np.ndarray, fmt: str, q: int = 90) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(b, fmt, quality=q)
    return b.getvalue()


def planted(kind: str, a: np.ndarray, rng: np.random.Generator) -> bytes:
    from PIL import Image, ImageFilter

    if kind == "reencode":
        return encode(a, "JPEG", int(rng.integers(70, 91)))
    if kind == "shift1":  # one pixel off one side, the edge repeated on the other
        dy, dx = [(1, 0), (0, 1), (-1, 0), (0, -1)][rng.integers(4)]
        s = np.roll(a, (dy, dx), (0, 1))
        return encode(s, "PNG")

    def cropped(frac):  # frac of the side off (half a side), resized back
        c = SIZE * frac / 2
        im = Image.fromarray(a).resize((SIZE, SIZE), Image.BILINEAR, box=(c, c, SIZE - c, SIZE - c))
        return np.asarray(im)

    if kind == "crop":  # 2-4% off the sides, resized back
        k = int(rng.integers(1, 3))
        return encode(
            np.asarray(Image.fromarray(a[k:-k, k:-k]).resize((SIZE, SIZE), Image.BILINEAR)), "PNG"
        )
    fmt = "JPEG" if rng.random() < 0.5 else "PNG"
    q = int(rng.integers(75, 96))
    if kind in ("hflip", "vflip", "rot90", "rot180"):
        t = {"hflip": a[:, ::-1], "vflip": a[::-1], "rot90": np.rot90(a), "rot180": np.rot90(a, 2)}
        return encode(t[kind], fmt, q)
    if kind == "crop5":  # 5% of the side
        return encode(cropped(0.05), fmt, q)
    if kind == "hflip_crop":  # 3% of the side, then mirrored
        return encode(cropped(0.03)[:, ::-1], fmt, q)
    im = Image.fromarray(a).filter(ImageFilter.GaussianBlur(float(kind[len("blur") :])))
    return encode(np.asarray(im), fmt, q)


def clean_of(i: int, seed: int, ph, textures: float):
    """Clean image i: (array, its crop parameters or None for a generated texture, the rng
    that goes on to pick its encoding)."""
    rng = np.random.default_rng([seed, i])
    if rng.random() < textures:
        return texture_image(rng), None, rng
    a, view = clean_image(rng, ph, params=True)
    return a, view, rng


def _clean_bytes(i: int, seed: int, ph, textures: float) -> bytes:
    a, _, rng = clean_of(i, seed, ph, textures)
    return encode(a, "JPEG", int(rng.integers(75, 96))) if rng.random() < 0.5 else encode(a, "PNG")


def _detail(a: np.ndarray) -> float:
    """rms gradient of the luma (grey levels per pixel): what DETAILED splits blurs by."""
    g = dc._luma(a)
    return float(np.sqrt(dc._grad_var(g)))


def make_chunk(args):
    """Images [lo, hi) of the benchmark set as (index, stats row, thumb, content hash, detail of
    the clean image or of a planted one's source)."""
    import hashlib

    from PIL import Image

    lo, hi, n_clean, plants, seed, which, textures = args
    ph = photos(which)
    out = []
    for i in range(lo, hi):
        if i < n_clean:
            raw = _clean_bytes(i, seed, ph, textures)
            a = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        else:
            kind, src = plants[i - n_clean]
            rng = np.random.default_rng([seed, i])
            src_bytes = _clean_bytes(src, seed, ph, textures)
            a = np.asarray(Image.open(io.BytesIO(src_bytes)).convert("RGB"))
            raw = planted(kind, a, rng)
        row, thumb = dc.image_stats(Image.open(io.BytesIO(raw)))
        out.append((i, row, thumb, hashlib.sha1(raw).hexdigest()[:16], _detail(a)))
    return out


def build(n: int, n_plant: int, workers: int, which: str = "all", seed: int = 0, textures=0.25):
    """(table, kind per image: '' for clean, source index per planted image or -1, detail per
    image: of the clean image, or of a planted one's source)."""
    rng = np.random.default_rng(seed)
    n_train = int(0.8 * n)
    plants = [(PLANTED[k % len(PLANTED)], int(rng.integers(0, n_train))) for k in range(n_plant)]
    total = n + n_plant
    table = dc.ImageTable.empty(total, ["a", "b"])
    detail = np.zeros(total)
    step = 500
    jobs = [
        (lo, min(lo + step, total), n, plants, seed, which, textures)
        for lo in range(0, total, step)
    ]
    with ProcessPoolExecutor(workers) as ex:
        for chunk in ex.map(make_chunk, jobs):
            for i, row, thumb, h, d in chunk:
                split = 0 if i < n_train else 1
                table.set_row(i, split, i % 2, f"#{i}", row, thumb, content_hash=h)
                detail[i] = d
    kind = [""] * n + [k for k, _ in plants]
    src = np.r_[np.full(n, -1), [s for _, s in plants]].astype(np.int64)
    return table, kind, src, detail


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="clean images")
    ap.add_argument(
        "--plant", type=int, default=1200, help=f"planted images ({len(PLANTED)} kinds)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--textures", type=float, default=0.25, help="share of clean images that are textures"
    )
    ic = settings()  # stage=inspect's defaults
    ap.add_argument("--hash-distance", type=int, default=ic.near_hash_distance)
    ap.add_argument("--thumb-distance", type=float, default=ic.near_thumb_distance)
    ap.add_argument("--window", type=int, default=ic.near_window)
    ap.add_argument(
        "--photos",
        choices=("all", "basic"),
        default="all",
        help="all: 15 photos (needs scikit-image: the extra `bench`); basic: the 3 bundled "
        "with scikit-learn and matplotlib (many crops of one scene: the harder case for "
        "false alarms)",
    )
    a = ap.parse_args(argv)
    if a.photos == "all" and not have_skimage():
        print(
            "scikit-image is not installed, so crops come from the 3 basic photos only "
            "(--photos basic); for the 15-photo set: pip install -e '.[bench]'",
            file=sys.stderr,
        )
        a.photos = "basic"
    t0 = time.perf_counter()
    table, kind, src, detail = build(a.n, a.plant, a.workers, a.photos, textures=a.textures)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = dc.near_pairs(table, a.hash_distance, a.thumb_distance, a.window)
    t_near = time.perf_counter() - t0
    t0 = time.perf_counter()
    groups, leaks = dc.duplicate_groups(table, pairs)
    t_group = time.perf_counter() - t0
    t0 = time.perf_counter()
    aug = dc.augmented_pairs(
        table,
        leaks,
        ic.augmented_hash_distance,
        ic.augmented_thumb_distance,
        ic.augmented_margin,
        a.window,
    )
    t_aug = time.perf_counter() - t0
    flags = dc.property_flags(table)
    n = a.n
    # recall: the planted copy is linked to its source (a leak pair, or one group)
    linked = {(p["train"], p["val"]) for p in leaks}
    for g in groups:
        m = g["members"]
        linked |= {(x, y) for x in m for y in m}
    linked_aug = {(p["train"], p["val"]): p["transform"] for p in aug}
    print(
        f"{n} clean ({a.textures:.0%} generated textures) + {a.plant} planted images from "
        f"{len(photos(a.photos))} photos ({a.photos}); build {t_build:.0f} s "
        f"({(n + a.plant) / t_build:.0f} images/s), near-duplicate search {t_near:.1f} s "
        f"({len(pairs)} near pairs), grouping {t_group:.1f} s, flipped/rotated search "
        f"{t_aug:.1f} s ({len(aug)} pairs)"
    )
    for k in COPIES:
        idx = [i for i in range(n, len(kind)) if kind[i] == k]
        hit = sum((int(src[i]), i) in linked for i in idx)
        print(f"  {k:10s} copies in val found as leaks: {hit}/{len(idx)} ({hit / len(idx):.1%})")
    for k in AUGMENTED:
        idx = [i for i in range(n, len(kind)) if kind[i] == k]
        hit = sum((int(src[i]), i) in linked_aug or (int(src[i]), i) in linked for i in idx)
        wrong = sum(
            (int(src[i]), i) in linked_aug
            and linked_aug[(int(src[i]), i)].split("+")[0] not in (k.split("_")[0], "crop")
            for i in idx
        )
        print(
            f"  {k:10s} copies in val found (data.leakage_augmented or data.leakage): "
            f"{hit}/{len(idx)} ({hit / len(idx):.1%}), transform misnamed {wrong}"
        )
    flagged = flags["data.blurry"][0]
    low_info = flags["data.low_information"][0]
    lap_only = table.ok & ~low_info & (table.num["sharpness"] < ic.blurry_max)  # before 12-07
    ph = photos(a.photos)
    is_texture = np.array([clean_of(int(i), 0, ph, a.textures)[1] is None for i in src[n:]])
    for k in BLURS:
        for what, sel in (
            ("smooth photo", lambda i: not is_texture[i - n] and detail[i] < DETAILED),
            ("detailed photo", lambda i: not is_texture[i - n] and detail[i] >= DETAILED),
            ("texture", lambda i: is_texture[i - n]),
        ):
            idx = np.array([i for i in range(n, len(kind)) if kind[i] == k and sel(i)])
            if len(idx):
                print(
                    f"  {k} of {what:14s} crops flagged blurry: {int(flagged[idx].sum())}/"
                    f"{len(idx)} ({flagged[idx].mean():.1%}; the Laplacian ratio alone "
                    f"{lap_only[idx].mean():.1%})"
                )
    print(
        f"  clean images flagged blurry: {int(flagged[:n].sum())}/{n} ({flagged[:n].mean():.3%}; "
        f"the Laplacian ratio alone {lap_only[:n].mean():.3%})"
    )
    # false alarms: clean images tied to another clean image that is not the same view

    def view(i):
        return clean_of(int(i), 0, ph, a.textures)[1]

    ties = [(p["train"], p["val"]) for p in leaks if p["train"] < n and p["val"] < n]
    for g in groups:
        m = [i for i in g["members"] if i < n]
        ties += [(m[0], j) for j in m[1:]]  # each against the group's first
    bad, same = set(), set()
    for i, j in ties:
        vi, vj = view(i), view(j)
        (same if vi is not None and vj is not None and same_view(vi, vj) else bad).update((i, j))
    print(
        f"  clean images in a near-duplicate group or leak with another clean image: "
        f"{len(bad)}/{n} ({len(bad) / n:.3%}) false alarms, plus {len(same - bad)} that show "
        "the same view of the photo (true near-duplicates the generator made)"
    )
    bad_aug, same_aug = set(), set()
    for p in aug:
        i, j = dc.leak_pair(p)
        if i < n and j < n:
            (same_aug if same_region(view(i), view(j)) else bad_aug).update((i, j))
    print(
        f"  clean images in a flipped/rotated pair with another clean image: {len(bad_aug)}/{n} "
        f"({len(bad_aug) / n:.3%}) false alarms, plus {len(same_aug - bad_aug)} crops of the "
        "same region of a photo (real copies the generator's random angle and mirror made)"
    )
    # what the planted faults are found by, on clean images: the false-flag rate (the other
    # property flags - dark, bright, grey crops - are real properties of some crops)
    wrong = flagged[:n].copy()
    wrong[list(bad | bad_aug)] = True
    print(
        f"  clean images flagged blurry or falsely matched (near-duplicate, leakage, flipped/"
        f"rotated): {int(wrong.sum())}/{n} ({wrong.mean():.3%}); clean detail (rms gradient) "
        f"median {np.median(detail[:n]):.1f}; other flags on clean images: "
        + ", ".join(
            f"{k.split('.', 1)[1]} {int(m[:n].sum())}"
            for k, (m, _, _) in flags.items()
            if m[:n].any() and k != "data.blurry"
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
