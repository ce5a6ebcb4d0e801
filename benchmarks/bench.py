"""Benchmark: the runner's loop against a hand-written PyTorch loop, side by side.

    python benchmarks/bench.py            # full run (~9 min on 2 CPU cores)
    python benchmarks/bench.py --compile  # also torch.compile (adds a minute or more)
    python benchmarks/bench.py --quick    # a tiny version (what tests/test_bench.py runs)

Measures, in one process tree, and prints ratios; writes benchmarks/results.json and
benchmarks/results.md (or --out DIR):
  * what the user waits for: per-epoch *process* wall time of `python -m runner stage=overfit`
    (5 epochs minus 1 epoch, divided by 4: start-up, checkpoints, metrics and the full
    validation pass included) vs a hand-written loop that also evaluates the full validation
    set every epoch, same model, data, batch and threads; runs paired and repeated; for
    resnet10t and tiny_cnn on digits at 32 px, and the image-folder path at 64 px against a
    torchvision ImageFolder + DataLoader loop on a generated folder. The machine's load
    (`uptime`) is recorded before measuring: figures from a loaded machine are not the
    product's speed;
  * training images/s of runner.loop.fit (loaders from runner.data) vs a minimal loop on
    the same model / batch / image size / threads / in-memory data; A,B,A,B repeats, medians;
  * an imagefolder of PNGs through the runner's StreamLoader with DataLoader workers:
    time waiting for data as a share of step time;
  * the baseline check suite (stage=baseline minus stage=train, same settings) and
    stage=inspect per 1,000 images, as subprocesses;
  * achieved FLOP/s of the training step (FlopCounterMode) / a measured fp32 matmul peak;
  * `python -m runner --help` start-up time;
  * options on/off: channels_last, bf16 autocast, torch.compile (compile time separately).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.data import StreamSplit, TensorSplit, eval_transform  # noqa: E402 (after sys.path)
from runner.loop import LoopOptions, fit  # noqa: E402
from runner.models import TinyCNN  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- models
def make_model(name: str, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    torch.manual_seed(0)
    if name == "tiny_cnn":
        return TinyCNN(num_classes=num_classes, in_chans=in_chans)
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)


def in_memory(n: int, size: int, num_classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, y


# ----------------------------------------------------------------------------- the two loops
def runner_epoch(model, opt, train_loader, val_loader, precision="fp32", channels_last=False):
    """One epoch through runner.loop.fit; returns training images/s (fit's own clock)."""
    recs = list(
        fit(
            model,
            opt,
            train_loader,
            val_loader,
            epochs=1,
            device=CPU,
            opts=LoopOptions(precision=precision, channels_last=channels_last),
        )
    )
    return recs[-1].images_per_s


def hand_epoch(model, opt, xf, y, batch_size, seed):
    """What a user writes by hand: pre-normalised float tensor, randperm, five lines."""
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(y) - batch_size + 1, batch_size):
        idx = perm[i : i + batch_size]
        xb, yb = xf[idx], y[idx]
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(yb)
    return n / (time.perf_counter() - t0)


def throughput(name, size, batch, steps, repeats):
    x, y = in_memory(batch * steps, size)
    xv, yv = x[:batch], y[:batch]
    split, val = TensorSplit(x, y, MEAN, STD), TensorSplit(xv, yv, MEAN, STD)
    tl = split.loader(batch, True, 0, CPU, train=True)
    vl = val.loader(batch, False, 0, CPU, train=False)
    xf = (x.float() / 255.0 - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(
        1, -1, 1, 1
    )
    m_r, m_h = make_model(name), make_model(name)
    o_r = torch.optim.Adam(m_r.parameters(), 1e-3)
    o_h = torch.optim.Adam(m_h.parameters(), 1e-3)
    runner_epoch(m_r, o_r, tl, vl)  # warm-up (allocator, oneDNN primitives)
    hand_epoch(m_h, o_h, xf, y, batch, 0)
    r, h = [], []
    for k in range(repeats):  # A,B,A,B
        r.append(runner_epoch(m_r, o_r, tl, vl))
        h.append(hand_epoch(m_h, o_h, xf, y, batch, k))
    mr, mh = statistics.median(r), statistics.median(h)
    return {
        "model": name,
        "image_size": size,
        "batch_size": batch,
        "steps": steps,
        "repeats": repeats,
        "runner_img_s": mr,
        "hand_img_s": mh,
        "ratio": mr / mh,
        # median of the per-pair ratios (A_k/B_k): less sensitive to load that drifts
        "paired_ratio": statistics.median(a / b for a, b in zip(r, h)),
        "runner_all": r,
        "hand_all": h,
    }


# ----------------------------------------------------------------------------- options
def options(name, size, batch, steps, repeats, compile_steps, do_compile):
    x, y = in_memory(batch * steps, size)
    split, val = TensorSplit(x, y, MEAN, STD), TensorSplit(x[:batch], y[:batch], MEAN, STD)
    tl = split.loader(batch, True, 0, CPU, train=True)
    vl = val.loader(batch, False, 0, CPU, train=False)
    variants = {"fp32": ("fp32", False), "channels_last": ("fp32", True), "bf16": ("bf16", False)}
    arms = {}
    for k, (prec, cl) in variants.items():
        m = make_model(name)
        if cl:
            m = m.to(memory_format=torch.channels_last)
        o = torch.optim.Adam(m.parameters(), 1e-3)
        runner_epoch(m, o, tl, vl, prec, cl)
        arms[k] = (m, o, prec, cl, [])
    for _ in range(repeats):
        for m, o, prec, cl, out in arms.values():
            out.append(runner_epoch(m, o, tl, vl, prec, cl))
    base = statistics.median(arms["fp32"][4])
    res = {
        k: {
            "img_s": statistics.median(v[4]),
            "vs_fp32": statistics.median(v[4]) / base,
            "all": v[4],
        }
        for k, v in arms.items()
    }
    if do_compile:
        xs, ys = in_memory(batch * compile_steps, size, seed=1)
        ctl = TensorSplit(xs, ys, MEAN, STD).loader(batch, True, 0, CPU, train=True)
        m = make_model(name)
        o = torch.optim.Adam(m.parameters(), 1e-3)
        cm = torch.compile(m)
        t0 = time.perf_counter()
        list(fit(cm, o, ctl, vl, epochs=1, device=CPU))
        first_s = time.perf_counter() - t0
        steady = [runner_epoch(cm, o, tl, vl) for _ in range(max(1, repeats // 2))]
        s = statistics.median(steady)
        # compile time: the first (compiling) epoch minus what its steps cost once compiled,
        # the eval pass in it compiles too (a second graph), so it is included
        compile_s = first_s - len(ys) / s
        res["compile"] = {"img_s": s, "vs_fp32": s / base, "compile_s": compile_s}
    return {"model": name, "image_size": size, "batch_size": batch, "results": res}


# ----------------------------------------------------------------------------- FLOP/s
def matmul_peak(n=1024, reps=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / min(ts)


def step_flops(name, size, batch):
    from torch.utils.flop_counter import FlopCounterMode

    m = make_model(name)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as fc:
        nn.functional.cross_entropy(m(x), y).backward()
    return fc.get_total_flops()


# ----------------------------------------------------------------------------- imagefolder
def write_pngs(root: Path, n: int, size: int, classes: int = 4):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(n):
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        a = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(a).save(d / f"{i:05d}.png")


class _Timed:
    """Wraps a runner loader; counts the time fit spends waiting for the next batch."""

    def __init__(self, inner):
        self.inner, self.wait = inner, 0.0

    def __len__(self):
        return len(self.inner)

    def epoch(self, epoch, start=0):
        it = iter(self.inner.epoch(epoch, start))
        while True:
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t0
            yield b


def imagefolder(root: Path, size: int, batch: int, workers_list, model_name="tiny_cnn"):
    from timm.data import ImageDataset

    ds = ImageDataset(str(root), input_img_mode="RGB")
    labels = torch.tensor([t for _, t in ds.reader.samples])
    split = StreamSplit(ds, labels, None, eval_transform(size, MEAN, STD), MEAN, STD, None, size)
    out = []
    for w in workers_list:
        m = make_model(model_name, num_classes=4)
        o = torch.optim.Adam(m.parameters(), 1e-3)
        tl = _Timed(split.loader(batch, True, 0, CPU, train=True, num_workers=w))
        vl = TensorSplit(*in_memory(batch, size, 4), MEAN, STD).loader(batch, False, 0, CPU)
        t0 = time.perf_counter()
        rec = list(fit(m, o, tl, vl, epochs=1, device=CPU))[-1]
        total = time.perf_counter() - t0
        out.append(
            {
                "num_workers": w,
                "images": len(ds),
                "img_s": rec.images_per_s,
                "epoch_s": rec.epoch_s,
                "data_wait_s": tl.wait,
                "data_share": tl.wait / rec.epoch_s,
                "wall_s": total,
            }
        )
    return out


# ----------------------------------------------------------------------------- subprocesses
def run_cli(args, tmp: Path, tag: str):
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "runner", *args, f"hydra.run.dir={tmp / tag}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    dt = time.perf_counter() - t0
    return dt, p.returncode


def startup(reps=3):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "runner", "--help"], cwd=ROOT, capture_output=True, check=True
        )
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def checks_cost(tmp: Path, epochs: int):
    common = ["data=digits", f"trainer.epochs={epochs}", "trainer.progress=false"]
    tb, rb = run_cli(["stage=baseline", *common], tmp, "baseline")
    tt, rt = run_cli(["stage=train", *common], tmp, "train")
    ti, ri = run_cli(["stage=inspect", "data=digits"], tmp, "inspect_digits")
    return {
        "baseline_s": tb,
        "train_s": tt,
        "checks_s": tb - tt,
        "baseline_rc": rb,
        "train_rc": rt,
        "inspect_digits_s": ti,
        "inspect_rc": ri,
        "inspect_digits_s_per_1000": ti / 1.797,
    }


# ----------------------------------------------------------------------------- process level
def load_avg() -> float:
    """The 1-minute load average (what `uptime` shows)."""
    return os.getloadavg()[0]


def hand_digits(model_name: str, epochs: int, threads: int, size: int = 32, batch: int = 128):
    """A hand-written loop on digits: Adam 3e-4, a full validation pass every epoch."""
    import numpy as np
    from sklearn.datasets import load_digits

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d = load_digits()
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    x = nn.functional.interpolate(x.float() / 255.0, size=(size, size), mode="bilinear")
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(y))
    n_val = round(0.2 * len(y))
    va, tr = perm[:n_val], perm[n_val:]
    model = make_model(model_name, 10, in_chans=1)
    # fused, as the runner's default optim.fused=null picks for Adam: the same optimiser step
    # on both arms, so the ratio measures the loop, checkpoints and evaluation
    opt = torch.optim.Adam(model.parameters(), 3e-4, fused=True)
    for epoch in range(epochs):
        model.train()
        order = tr[torch.randperm(len(tr))]
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            correct = sum(
                int((model(x[va[i : i + 2 * batch]]).argmax(1) == y[va[i : i + 2 * batch]]).sum())
                for i in range(0, len(va), 2 * batch)
            )
        print(f"epoch {epoch + 1} val_acc {correct / len(va):.4f}", flush=True)


def hand_folder(
    root: str,
    model_name: str,
    epochs: int,
    threads: int,
    size: int = 64,
    batch: int = 128,
    workers: int = 0,
):
    """torchvision ImageFolder + DataLoader: the hand-written image-folder loop (80/20 split,
    a full validation pass every epoch)."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tf = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    ds = datasets.ImageFolder(root, tf)
    perm = torch.randperm(len(ds)).tolist()
    n_val = round(0.2 * len(ds))
    train = DataLoader(Subset(ds, perm[n_val:]), batch, shuffle=True, num_workers=workers)
    val = DataLoader(Subset(ds, perm[:n_val]), 2 * batch, num_workers=workers)
    model = make_model(model_name, len(ds.classes))
    opt = torch.optim.Adam(model.parameters(), 3e-4, fused=True)  # as the runner's default
    for epoch in range(epochs):
        model.train()
        for xb, yb in train:
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in val)
        print(f"epoch {epoch + 1} val_acc {correct / n_val:.4f}", flush=True)


def _wall(cmd, cwd=ROOT) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if p.returncode not in (0, 1):  # 1: a check failed (the run itself finished)
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout[-2000:]}"
            f"{p.stderr[-2000:]}"
        )
    return dt


def process_level(tmp: Path, arm_cmds, reps: int, e_lo: int = 1, e_hi: int = 5, tag: str = ""):
    """Per-epoch process wall time, (t[e_hi] - t[e_lo]) / (e_hi - e_lo), of two commands
    (`arm_cmds[name](epochs, tag)` -> argv), run interleaved A,B,A,B `reps` times."""
    per = {name: [] for name in arm_cmds}
    for k in range(reps):
        for name, make in arm_cmds.items():
            lo = _wall(make(e_lo, f"{tag}{name}_{k}_lo"))  # a fresh run directory each
            hi = _wall(make(e_hi, f"{tag}{name}_{k}_hi"))
            per[name].append((hi - lo) / (e_hi - e_lo))
    (a, ra), (b, rb) = per.items()
    return {
        "epochs": [e_lo, e_hi],
        "reps": reps,
        f"{a}_epoch_s": statistics.median(ra),
        f"{b}_epoch_s": statistics.median(rb),
        f"{a}_all": ra,
        f"{b}_all": rb,
        # speed of a relative to b: b's epoch time / a's (>= 1: a is as fast or faster)
        "speed_ratio": statistics.median(y / x for x, y in zip(ra, rb)),
    }


def process_figures(tmp: Path, threads: int, reps: int, folder_images: int):
    py, bench = sys.executable, str(Path(__file__).resolve())
    out = {"load_before": load_avg()}
    digits = []
    for model in ("resnet10t", "tiny_cnn"):
        model_args = (
            ["model=timm", f"model.name={model}"] if model != "tiny_cnn" else ["model=tiny_cnn"]
        )

        def runner(epochs, tag, model_args=model_args, model=model):
            return [
                py,
                "-m",
                "runner",
                "stage=overfit",
                "data=digits",
                "data.image_size=32",
                *model_args,
                "trainer.batch_size=128",
                f"trainer.epochs={epochs}",
                f"trainer.threads={threads}",
                "trainer.progress=false",
                "checks.overfit_train_fit.train_loss_target=0",
                # the lr range test (a fixed cost before training) is not the input path
                "checks.train_lr_range.enabled=false",
                f"hydra.run.dir={tmp / model / tag}",
            ]

        def hand(epochs, tag, model=model):
            return [py, bench, "--hand-digits", model, str(epochs), str(threads)]

        r = process_level(tmp, {"runner": runner, "hand": hand}, reps, tag=f"{model}_")
        r["model"] = model
        digits.append(r)
        print(
            f"process    {model:10s} stage=overfit {r['runner_epoch_s']:.2f} s/epoch vs hand "
            f"{r['hand_epoch_s']:.2f} s/epoch: speed ratio {r['speed_ratio']:.3f}",
            flush=True,
        )
    out["digits"] = digits
    root = tmp / "folder"
    write_images(root, folder_images, 64)

    def runner_f(epochs, tag):
        return [
            py,
            "-m",
            "runner",
            "stage=overfit",
            "data=imagefolder",
            f"data.root={root}",
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

    def hand_f(epochs, tag):
        return [py, bench, "--hand-folder", str(root), "resnet10t", str(epochs), str(threads)]

    # 3 epochs minus 1: one epoch's difference moved by +-0.5 s of ~7 s from run to run
    f = process_level(tmp, {"runner": runner_f, "hand": hand_f}, reps, 1, 3, tag="folder_")
    f.update({"model": "resnet10t", "images": folder_images, "image_size": 64})
    n_train = folder_images - round(0.2 * folder_images)
    f["runner_img_s"], f["hand_img_s"] = n_train / f["runner_epoch_s"], n_train / f["hand_epoch_s"]
    out["imagefolder"] = f
    print(
        f"process    imagefolder 64 px {f['runner_img_s']:.0f} vs hand {f['hand_img_s']:.0f} "
        f"img/s: speed ratio {f['speed_ratio']:.3f}",
        flush=True,
    )
    out["load_after"] = load_avg()
    return out


def write_images(root: Path, n: int, size: int, classes: int = 10):
    """A generated folder of n images (half JPEG, half PNG) in `classes` class folders."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(n):
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        a = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(a).save(d / f"{i:05d}.{'jpg' if i % 2 else 'png'}")


# ----------------------------------------------------------------------------- report
def markdown(res) -> str:
    L = [
        f"# Benchmark ({res['machine']})",
        "",
        (
            f"torch {res['torch']}, {res['threads']} threads, {res['when']}, "
            f"1-minute load before measuring {res.get('load_before', float('nan')):.2f}"
        ),
        "",
    ]
    p = res.get("process")
    if p:
        L += [
            "## What the user waits for: per-epoch process wall time",
            "",
            (
                "`python -m runner stage=overfit` (start-up, checkpoints, metrics and a full "
                f"validation pass included; {p['digits'][0]['epochs'][1]} epochs minus "
                f"{p['digits'][0]['epochs'][0]}) vs a hand-written loop with a full validation "
                "pass each epoch; batch 128, paired runs, medians; speed ratio = median of the "
                "paired hand s / runner s (1-minute load at the start of this section "
                f"{p['load_before']:.2f} and at its end {p['load_after']:.2f}: the benchmark's "
                "own two processes)"
            ),
            "",
            "| data | model | image | runner s/epoch | hand s/epoch | speed ratio |",
            "|---|---|---|---|---|---|",
        ]
        for r in p["digits"]:
            L.append(
                f"| digits | {r['model']} | 32 | {r['runner_epoch_s']:.2f} | "
                f"{r['hand_epoch_s']:.2f} | {r['speed_ratio']:.3f} |"
            )
        f = p["imagefolder"]
        L.append(
            f"| image folder ({f['images']} JPEG/PNG; {f['epochs'][1]} epochs minus "
            f"{f['epochs'][0]}) | {f['model']} | 64 | "
            f"{f['runner_epoch_s']:.2f} ({f['runner_img_s']:.0f} img/s) | "
            f"{f['hand_epoch_s']:.2f} ({f['hand_img_s']:.0f} img/s) | "
            f"{f['speed_ratio']:.3f} |"
        )
        L.append("")
    L += [
        "## Training throughput, runner loop vs hand-written loop (median images/s)",
        "",
        "| model | image | batch | runner img/s | hand img/s | ratio | paired ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in res["throughput"]:
        L.append(
            f"| {t['model']} | {t['image_size']} | {t['batch_size']} | "
            f"{t['runner_img_s']:.0f} | {t['hand_img_s']:.0f} | {t['ratio']:.3f} | "
            f"{t['paired_ratio']:.3f} |"
        )
    L += [
        "",
        "## Imagefolder (PNG) through StreamLoader: data wait as a share of step time",
        "",
        "| workers | images | img/s | data wait s | epoch s | data share |",
        "|---|---|---|---|---|---|",
    ]
    for d in res["imagefolder"]:
        L.append(
            f"| {d['num_workers']} | {d['images']} | {d['img_s']:.0f} | {d['data_wait_s']:.2f} | "
            f"{d['epoch_s']:.2f} | {d['data_share']:.1%} |"
        )
    f = res["flops"]
    L += [
        "",
        "## Achieved FLOP/s of the training step",
        "",
        "| model | GFLOP/step | steps/s | achieved GFLOP/s | matmul peak GFLOP/s | fraction |",
        "|---|---|---|---|---|---|",
    ]
    for r in f["models"]:
        L.append(
            f"| {r['model']} | {r['gflop_per_step']:.3f} | {r['steps_s']:.1f} | "
            f"{r['gflops']:.1f} | {f['peak_gflops']:.1f} | {r['fraction_of_peak']:.1%} |"
        )
    o = res["options"]
    L += [
        "",
        f"## Options ({o['model']}, {o['image_size']} px, batch {o['batch_size']}, runner loop)",
        "",
        "| option | img/s | vs fp32 | compile s |",
        "|---|---|---|---|",
    ]
    for k, v in o["results"].items():
        cs = f"{v['compile_s']:.1f}" if "compile_s" in v else ""
        L.append(f"| {k} | {v['img_s']:.0f} | {v['vs_fp32']:.3f} | {cs} |")
    L += [
        "",
        "## Overheads",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| `python -m runner --help` start-up (target < 3 s) | {res['startup_s']:.2f} |",
    ]
    c = res.get("checks")
    if c:
        L += [
            f"| stage=baseline data=digits ({c['epochs']} epoch) | {c['baseline_s']:.1f} |",
            f"| stage=train, same settings | {c['train_s']:.1f} |",
            f"| baseline check suite (difference) | {c['checks_s']:.1f} |",
            f"| stage=inspect data=digits (1,797 images, incl. start-up) | {c['inspect_digits_s']:.1f} |",
            f"| stage=inspect per 1,000 images | {c['inspect_digits_s_per_1000']:.1f} |",
        ]
    L += [
        "",
        "## GPU",
        "",
        "CUDA figures (runner vs hand loop at 224 px, MFU, torch.compile, DDP with NCCL) come "
        "from `benchmarks/bench_gpu.py` on a GPU machine: [gpu_results.md](gpu_results.md).",
    ]
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for the test)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--no-cli", action="store_true", help="skip the stage subprocesses")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also torch.compile (resnet10t: ~80 s to compile on 2 busy cores)",
    )
    ap.add_argument(
        "--process-reps",
        type=int,
        default=3,
        help="paired repeats of the process-level figure (0 = skip it)",
    )
    ap.add_argument(
        "--folder-images",
        type=int,
        default=2000,
        help="images in the generated folder of the process-level figure",
    )
    ap.add_argument(
        "--max-load",
        type=float,
        default=0.5,
        help="refuse to measure when the 1-minute load is at or above this",
    )
    ap.add_argument(
        "--hand-digits", nargs=3, metavar=("MODEL", "EPOCHS", "THREADS"), help=argparse.SUPPRESS
    )  # the hand-written arm, run as its own process
    ap.add_argument(
        "--hand-folder",
        nargs=4,
        metavar=("ROOT", "MODEL", "EPOCHS", "THREADS"),
        help=argparse.SUPPRESS,
    )
    a = ap.parse_args(argv)
    if a.hand_digits:
        return hand_digits(a.hand_digits[0], int(a.hand_digits[1]), int(a.hand_digits[2]))
    if a.hand_folder:
        return hand_folder(
            a.hand_folder[0], a.hand_folder[1], int(a.hand_folder[2]), int(a.hand_folder[3])
        )
    load = load_avg()
    print(f"load       1-minute load average {load:.2f} (uptime) before measuring", flush=True)
    if not a.quick and load >= a.max_load:
        raise SystemExit(
            f"the machine is busy (1-minute load {load:.2f} >= {a.max_load}): "
            "figures taken now would not be the product's speed; rerun when it "
            "is quiet (or pass --max-load)"
        )
    threads = a.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    q = a.quick
    reps = 3 if q else 5
    res = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": threads,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "quick": q,
        "load_before": load,
    }
    t_all = time.perf_counter()

    cfgs = [("tiny_cnn", 32, 64, 4 if q else 16), ("resnet10t", 32, 32, 2 if q else 4)]
    res["throughput"] = [throughput(n, s, b, st, reps) for n, s, b, st in cfgs]
    for t in res["throughput"]:
        print(
            f"throughput {t['model']:10s} runner/hand = {t['ratio']:.3f} "
            f"(paired {t['paired_ratio']:.3f}) "
            f"({t['runner_img_s']:.0f} vs {t['hand_img_s']:.0f} img/s)",
            flush=True,
        )

    peak = matmul_peak(256 if q else 1024)
    fl = []
    for t in res["throughput"]:
        f = step_flops(t["model"], t["image_size"], t["batch_size"])
        sps = t["runner_img_s"] / t["batch_size"]
        fl.append(
            {
                "model": t["model"],
                "gflop_per_step": f / 1e9,
                "steps_s": sps,
                "gflops": f * sps / 1e9,
                "fraction_of_peak": f * sps / peak,
            }
        )
    res["flops"] = {"peak_gflops": peak / 1e9, "models": fl}
    for r in fl:
        print(
            f"flops      {r['model']:10s} {r['gflops']:.1f} GFLOP/s = "
            f"{r['fraction_of_peak']:.1%} of matmul peak {peak / 1e9:.1f}",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        write_pngs(tmp / "png", 64 if q else 256, 64)
        res["imagefolder"] = imagefolder(tmp / "png", 64, 32, [0] if q else [0, 2])
        for d in res["imagefolder"]:
            print(
                f"imagefolder workers={d['num_workers']} data wait share = {d['data_share']:.1%}",
                flush=True,
            )
        o_name, o_size, o_batch = ("tiny_cnn", 32, 32) if q else ("resnet10t", 32, 32)
        res["options"] = options(
            o_name, o_size, o_batch, 2 if q else 4, 1 if q else 3, 2 if q else 4, a.compile
        )
        for k, v in res["options"]["results"].items():
            extra = f", compile {v['compile_s']:.1f} s" if "compile_s" in v else ""
            print(f"option     {k:13s} vs fp32 = {v['vs_fp32']:.3f}{extra}", flush=True)
        res["startup_s"] = startup(1 if q else 3)
        print(
            f"startup    python -m runner --help = {res['startup_s']:.2f} s (target < 3 s)",
            flush=True,
        )
        if not a.no_cli and a.process_reps > 0:
            res["process"] = process_figures(
                tmp, threads, 1 if q else a.process_reps, 200 if q else a.folder_images
            )
        if not a.no_cli:
            res["checks"] = checks_cost(tmp, 1)
            res["checks"]["epochs"] = 1
            c = res["checks"]
            print(
                f"checks     baseline suite = {c['checks_s']:.1f} s "
                f"(baseline {c['baseline_s']:.1f} s - train {c['train_s']:.1f} s); "
                f"inspect {c['inspect_digits_s_per_1000']:.1f} s per 1,000 images",
                flush=True,
            )
    res["bench_wall_s"] = time.perf_counter() - t_all
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    (out / "results.md").write_text(markdown(res))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} ({res['bench_wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
