"""data.label_issues against cleanlab, side by side (issue 25): recall, precision, F1, time.

    pip install -e '.[bench]'     # cleanlab (the anchor), scikit-image (more photos)
    python benchmarks/bench_labels.py [--photos 3000] [--seeds 3]

The same data, the same planted flips, three finders:
- `runner`: runner.checks.labels.find_label_issues on the features stage=inspect gives it
  (image_features of the 16x16 grey thumbnails; digits: their 8x8 pixels), all of it timed:
  its cross-validated model and confident learning;
- `cleanlab`: what cleanlab's documentation has a user do: out-of-fold probabilities from
  scikit-learn (`cross_val_predict`, 5 folds, LogisticRegression on the standardised same
  features) then `cleanlab.filter.find_label_issues(labels, pred_probs)` (its defaults),
  all of it timed;
- `cleanlab_same_probs`: cleanlab's filter on the runner's own out-of-fold probabilities
  (isolates the filter: the two implementations of confident learning should agree).

Data: digits (1797 8x8 images, 10 classes) and --photos N 64 px crops of bundled photos (the
class is the photo a crop comes from: benchmarks/bench_data.py's generator, rotated, scaled,
mirrored). Noise: 5%, 10%, 20% of the labels flipped to a random other class, and an
asymmetric flip (30% of one class labelled as a similar one: digits 1 -> 7, photos 0 -> 1).
Each cell is the mean over --seeds seeds of the planted flips. Prints one row per cell.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    from runner.checks.labels import image_features

    return image_features(d.images), d.target.astype(np.int64), 10, (1, 7)


def photo_crops(n: int, seed: int = 0):
    """n crops (their inspect thumbnails' features) labelled by the photo they come from."""
    import bench_data as bd
    from PIL import Image

    from runner.checks import data as dc
    from runner.checks.labels import image_features

    ph = bd.photos("all" if bd.have_skimage() else "basic")
    rng = np.random.default_rng(seed)
    thumbs, labels = [], []
    for _ in range(n):
        a, (k, *_rest) = bd.clean_image(rng, ph, params=True)
        _, thumb = dc.image_stats(Image.fromarray(np.ascontiguousarray(a)), 128)
        thumbs.append(thumb)
        labels.append(k)
    return image_features(np.stack(thumbs)[:, None]), np.array(labels), len(ph), (0, 1)


def plant(labels, k, kind, rng):
    """(noisy labels, mask of the flipped rows)."""
    noisy = labels.copy()
    if isinstance(kind, str):
        rate = float(kind[3:]) / 100
        flip = rng.random(len(labels)) < rate
        noisy[flip] = (labels[flip] + rng.integers(1, k, flip.sum())) % k
    else:
        a, b = kind
        flip = (labels == a) & (rng.random(len(labels)) < 0.3)
        noisy[flip] = b
    return noisy, flip


def runner_finder(x, noisy, k):
    from runner.checks.labels import find_label_issues

    res = find_label_issues(x, noisy, k)
    found = np.zeros(len(noisy), bool)
    found[[it.index for it in res.issues]] = True
    return found


def cleanlab_finder(x, noisy, k):
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probs = cross_val_predict(model, x, noisy, cv=5, method="predict_proba")
    return find_label_issues(noisy, probs)


def cleanlab_same_probs(x, noisy, k):
    from cleanlab.filter import find_label_issues

    from runner.checks.labels import out_of_sample_probs

    probs = out_of_sample_probs(x, noisy, k)
    return find_label_issues(noisy, probs)


FINDERS = {
    "runner": runner_finder,
    "cleanlab": cleanlab_finder,
    "cleanlab_same_probs": cleanlab_same_probs,
}


def score(found, flip):
    tp = int((found & flip).sum())
    recall = tp / max(int(flip.sum()), 1)
    precision = tp / max(int(found.sum()), 1)
    f1 = 2 * recall * precision / max(recall + precision, 1e-12)
    return recall, precision, f1


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args(argv)
    import os

    print(f"load (1 min): {os.getloadavg()[0]:.2f}", flush=True)
    sets = {"digits": digits()}
    if a.photos:
        t0 = time.perf_counter()
        sets["photos"] = photo_crops(a.photos)
        print(f"photo crops: {a.photos} built in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    print(f"{'data':7s} {'noise':9s} {'finder':20s} recall precision   F1   seconds")
    for name, (x, labels, k, pair) in sets.items():
        for kind in ("sym5", "sym10", "sym20", pair):
            cell = {f: [] for f in FINDERS}
            for seed in range(a.seeds):
                noisy, flip = plant(labels, k, kind, np.random.default_rng(seed))
                for f, fn in FINDERS.items():  # interleaved: the same load for each
                    t0 = time.perf_counter()
                    found = fn(x, noisy, k)
                    cell[f].append((*score(found, flip), time.perf_counter() - t0))
            label = kind if isinstance(kind, str) else f"{kind[0]}->{kind[1]} 30%"
            for f, vals in cell.items():
                r, p, f1, s = np.mean(vals, axis=0)
                rows.append(
                    dict(data=name, noise=label, finder=f, recall=r, precision=p, f1=f1, seconds=s)
                )
                print(
                    f"{name:7s} {label:9s} {f:20s} {r:6.3f} {p:9.3f} {f1:6.3f} {s:8.2f}", flush=True
                )
    print(f"load (1 min) after: {os.getloadavg()[0]:.2f}")
    return rows


if __name__ == "__main__":
    main()
