"""The data kinds' input paths against a torchvision ImageFolder + DataLoader loop (issue 28):
per-epoch process wall time of `python -m runner stage=overfit` reading the same generated
JPEG/PNG images as an image folder, as a labels file (data=manifest) and, when webdataset's
kind is installed, as tar shards (data=wds, indexed and streamed).

    python benchmarks/bench_sources.py [--images 2000] [--reps 3] [--threads 2]

(about 10 minutes per repetition at 2000 images on 2 CPU cores: five arms, two runs each)

Every arm trains resnet10t at 64 px, batch 128, and evaluates the full validation split each
epoch; per-epoch time = (wall of 3 epochs - wall of 1 epoch) / 2, so start-up (imports,
indexing, hashing the images for the fingerprint) cancels out. Arms run interleaved
(A, B, C, A, B, C, ...) `--reps` times; printed: each arm's median seconds per epoch and its
speed ratio to the hand loop (median of the paired hand s / arm s; >= 0.95 is the goal), and
the 1-minute load before and after. Refuses to start at a load of 0.5 or more (--force: run
anyway, the figures are then not to be published).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (benchmarks/bench.py: the hand loop, the image writer, timing)


def write_manifest(root: Path) -> Path:
    """labels.csv beside the folder's class folders, in the folder's own order."""
    from timm.data import ImageDataset

    ds = ImageDataset(str(root))
    names = {v: k for k, v in ds.reader.class_to_idx.items()}
    f = root / "labels.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for path, target in ds.reader.samples:
            w.writerow([str(Path(path).relative_to(root)), names[target]])
    return f


def arms(root: Path, tmp: Path, threads: int) -> dict:
    """name -> fn(epochs, tag) -> argv."""
    py = sys.executable
    manifest = write_manifest(root)

    def runner(*data_args):
        def make(epochs, tag):
            return [
                py,
                "-m",
                "runner",
                "stage=overfit",
                *data_args,
                "data.image_size=64",
                "model=timm",
                "model.name=resnet10t",
                "trainer.batch_size=128",
                f"trainer.epochs={epochs}",
                f"trainer.threads={threads}",
                "trainer.progress=false",
                "checks.overfit_train_fit.train_loss_target=0",
                # the lr range test (a fixed cost before training) is not the input path
                "checks.train_lr_range.enabled=false",
                f"hydra.run.dir={tmp / tag}",
            ]

        return make

    def hand(epochs, tag):
        return [
            py,
            bench.__file__,
            "--hand-folder",
            str(root),
            "resnet10t",
            str(epochs),
            str(threads),
        ]

    out = {
        "hand": hand,
        "imagefolder": runner("data=imagefolder", f"data.root={root}"),
        "manifest": runner("data=manifest", f"data.files={manifest}"),
    }
    out.update(shard_arms(root, tmp, runner))
    return out


def write_shards(root: Path, out: Path, per_shard: int = 500) -> str:
    """The folder's images as tar shards of `per_shard` samples (image + cls), in the folder's
    order; returns the brace pattern that names them."""
    import webdataset as wds
    from timm.data import ImageDataset

    ds = ImageDataset(str(root))
    names = {v: k for k, v in ds.reader.class_to_idx.items()}
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "train-%03d.tar"), maxcount=per_shard, verbose=0) as w:
        for path, target in ds.reader.samples:
            p = Path(path)
            w.write(
                {
                    "__key__": f"{p.parent.name}/{p.stem}",
                    p.suffix[1:].lower(): p.read_bytes(),
                    "cls": names[target],
                }
            )
    n = len(list(out.glob("train-*.tar")))
    return str(out / f"train-{{000..{n - 1:03d}}}.tar")


def shard_arms(root: Path, tmp: Path, runner) -> dict:
    """data=wds arms (indexed and streamed) when the kind is there."""
    try:
        import webdataset  # noqa: F401  (the wds extra)
    except ImportError:
        print("webdataset not installed (pip install -e '.[wds]'): no shard arms", flush=True)
        return {}
    shards = write_shards(root, tmp / "shards")
    return {
        "wds": runner("data=wds", f"data.shards.train='{shards}'"),
        "wds_stream": runner("data=wds", f"data.shards.train='{shards}'", "data.stream=true"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    load = bench.load_avg()
    print(f"load (1 min) before: {load:.2f}", flush=True)
    if load >= 0.5 and not a.force:
        sys.exit(f"load {load:.2f} >= 0.5: figures taken under load are not published")
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        root = tmp / "folder"
        bench.write_images(root, a.images, 64)
        commands = arms(root, tmp, a.threads)
        per = {name: [] for name in commands}
        for k in range(a.reps):
            for name, make in commands.items():
                lo = bench._wall(make(1, f"{name}_{k}_lo"))
                hi = bench._wall(make(3, f"{name}_{k}_hi"))
                per[name].append((hi - lo) / 2)
                print(f"  rep {k} {name:12s} {per[name][-1]:.2f} s/epoch", flush=True)
    res = {"images": a.images, "reps": a.reps, "threads": a.threads, "load_before": load}
    hand = per.pop("hand")
    res["hand_epoch_s"] = statistics.median(hand)
    print(f"hand torchvision loop  {res['hand_epoch_s']:.2f} s/epoch")
    for name, ts in per.items():
        ratio = statistics.median(h / t for h, t in zip(hand, ts))
        res[name] = {"epoch_s": statistics.median(ts), "speed_ratio": ratio, "all": ts}
        print(f"runner {name:15s} {res[name]['epoch_s']:.2f} s/epoch: speed ratio {ratio:.3f}")
    res["load_after"] = bench.load_avg()
    print(f"load (1 min) after: {res['load_after']:.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
