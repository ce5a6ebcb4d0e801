"""GPU benchmark (issue 18 item 3): the runner's loop against a hand-written loop on CUDA.

    python benchmarks/bench_gpu.py                       # a CUDA machine: ~3-6 min
    python benchmarks/bench_gpu.py --compile --ddp       # + torch.compile, + a torchrun/NCCL run
    python benchmarks/bench_gpu.py --quick --device cpu  # the smoke test (tests/test_bench.py)

For resnet18 and resnet50 at 224 px, batch 128, and each input path option (fp32; bf16
autocast; bf16 + channels_last; the same with cudnn.benchmark): training images/s of
`runner.loop.fit` on the runner's TensorLoader (uint8 images on the device, normalised there
per batch), timed around the whole fit() call with the device synchronised (its one-batch
validation included), against a hand-written loop over the same uint8 tensor (index,
normalise, forward, backward, step; synchronised before the clock stops), A,B,A,B repeats,
medians and the median of the paired ratios; the training step's FLOPs
(torch.utils.flop_counter) and MFU against a dense matmul peak measured on the same device
in the precision the step's convolutions use (fp32 convolutions run as TF32 on CUDA by
cuDNN's default); with --compile, torch.compile's steady img/s and its compile time for the
--compile-variants; with --ddp, `torchrun --nproc_per_node=<GPUs> -m runner stage=train` on
synthetic data with NCCL (exit code and wall time). Eager runs come first, then DDP, then
compile; the results files are rewritten after each so a run cut short keeps what it
measured. Writes gpu_results.json and gpu_results.md (--out DIR, default benchmarks/), and
records the device, the torch and CUDA versions and the host's 1-minute load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.data import TensorSplit  # noqa: E402 (after sys.path)
from runner.loop import LoopOptions, autocast, fit  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# name: (precision, channels_last, cudnn.benchmark)
VARIANTS = {
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "bf16+channels_last+cudnn.benchmark": ("bf16", True, True),
}
QUICK_VARIANTS = ("fp32", "bf16+channels_last")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(name: str, device: torch.device, channels_last: bool) -> nn.Module:
    import timm

    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=10).to(device)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def runner_img_s(model, opt, loader, val, n, device, precision, channels_last) -> tuple:
    """One epoch of `n` images through runner.loop.fit: (img/s by the wall clock around the
    whole call, the device synchronised before and after; img/s by the loop's own clock)."""
    opts = LoopOptions(precision=precision, channels_last=channels_last, eval_every=10**6)
    sync(device)
    t0 = time.perf_counter()
    recs = list(fit(model, opt, loader, val, epochs=1, device=device, opts=opts))
    sync(device)
    return n / (time.perf_counter() - t0), recs[-1].images_per_s


def hand_img_s(model, opt, x, y, batch, device, precision, channels_last, seed) -> float:
    """A careful hand-written loop on the same uint8 tensor on the device."""
    mean = torch.tensor(MEAN, device=device).view(1, -1, 1, 1)
    std = torch.tensor(STD, device=device).view(1, -1, 1, 1)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(device)
    model.train()
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(y) - batch + 1, batch):
        idx = perm[i : i + batch]
        xb = (x[idx].float().div_(255.0) - mean) / std
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            loss = nn.functional.cross_entropy(model(xb).float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += batch
    sync(device)
    return n / (time.perf_counter() - t0)


def matmul_peak(device: torch.device, kind: str, n: int, reps: int = 10, trials: int = 5) -> float:
    """Dense n x n matmul FLOP/s, the best of `trials` timings of `reps` products: kind fp32
    (TF32 off), tf32 (TF32 on) or bf16. The best, as a peak is: on a CPU that another process
    shares, a timing can come out tens of times slow (a thread of the product descheduled)."""
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        best = float("inf")
        for _ in range(trials):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync(device)
            best = min(best, time.perf_counter() - t0)
        return 2 * n**3 * reps / best
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


def peak_kind(device: torch.device, precision: str) -> str:
    """The peak an MFU is taken against: the precision the convolutions run in (cuDNN runs
    fp32 convolutions as TF32 unless torch.backends.cudnn.allow_tf32 is turned off)."""
    if precision == "bf16":
        return "bf16"
    return "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


def step_flops(model, batch, size, device, precision, channels_last) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    with FlopCounterMode(display=False) as fc, autocast(device, precision):
        nn.functional.cross_entropy(model(x).float(), y).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def make_data(size, batch, steps, device):
    g = torch.Generator().manual_seed(0)
    xh = torch.randint(0, 256, (batch * steps, 3, size, size), dtype=torch.uint8, generator=g)
    yh = torch.randint(0, 10, (batch * steps,), generator=g)
    loader = TensorSplit(xh, yh, MEAN, STD).loader(batch, True, 0, device, train=True)
    val = TensorSplit(xh[:batch], yh[:batch], MEAN, STD).loader(batch, False, 0, device)
    return loader, val, xh.to(device), yh.to(device)


def measure(name, size, batch, steps, reps, device, variant, peaks):
    precision, cl, bench = VARIANTS[variant]
    torch.backends.cudnn.benchmark = bench
    loader, val, x, y = make_data(size, batch, steps, device)
    n = batch * steps
    m_r, m_h = make_model(name, device, cl), make_model(name, device, cl)
    o_r = torch.optim.AdamW(m_r.parameters(), 1e-3)
    o_h = torch.optim.AdamW(m_h.parameters(), 1e-3)
    runner_img_s(m_r, o_r, loader, val, n, device, precision, cl)  # warm-up: allocator, kernels
    hand_img_s(m_h, o_h, x, y, batch, device, precision, cl, 0)
    r, r_loop, h = [], [], []
    for k in range(reps):  # A,B,A,B
        wall, own = runner_img_s(m_r, o_r, loader, val, n, device, precision, cl)
        r.append(wall)
        r_loop.append(own)
        h.append(hand_img_s(m_h, o_h, x, y, batch, device, precision, cl, k + 1))
    flops = step_flops(m_r, batch, size, device, precision, cl)
    runner = statistics.median(r)
    pk = peak_kind(device, precision)
    torch.backends.cudnn.benchmark = False
    return {
        "model": name,
        "variant": variant,
        "precision": precision,
        "channels_last": cl,
        "cudnn_benchmark": bench,
        "image_size": size,
        "batch_size": batch,
        "images_per_epoch": n,
        "runner_img_s": runner,
        "runner_loop_clock_img_s": statistics.median(r_loop),
        "hand_img_s": statistics.median(h),
        "ratio": runner / statistics.median(h),
        "paired_ratio": statistics.median(a / b for a, b in zip(r, h)),
        "gflop_per_step": flops / 1e9,
        "achieved_tflops": flops * runner / batch / 1e12,
        "mfu_against": pk,
        "mfu": flops * runner / batch / peaks[pk],
        "runner_all": r,
        "hand_all": h,
    }


def measure_compile(name, size, batch, steps, reps, device, variant, eager_img_s):
    precision, cl, bench = VARIANTS[variant]
    torch.backends.cudnn.benchmark = bench
    loader, val, _, _ = make_data(size, batch, steps, device)
    n = batch * steps
    m_c = make_model(name, device, cl)
    o_c = torch.optim.AdamW(m_c.parameters(), 1e-3)
    cm = torch.compile(m_c)
    t0 = time.perf_counter()
    first, _ = runner_img_s(cm, o_c, loader, val, n, device, precision, cl)
    first_s = time.perf_counter() - t0
    steady = statistics.median(
        runner_img_s(cm, o_c, loader, val, n, device, precision, cl)[0] for _ in range(reps)
    )
    torch.backends.cudnn.benchmark = False
    return {
        "model": name,
        "variant": variant,
        "img_s": steady,
        "vs_eager": steady / eager_img_s if eager_img_s else None,
        # the first epoch's time minus what its steps cost once compiled (train and eval graphs)
        "compile_s": first_s - n / steady,
        "first_epoch_img_s": first,
    }


def ddp_run(tmp: Path, gpus: int, quick: bool) -> dict:
    """`torchrun -m runner stage=train` on synthetic data over every GPU (NCCL)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "runner",
        "stage=train",
        "data=synthetic",
        f"data.num_train={512 if quick else 8192}",
        "data.image_size=64",
        "trainer.epochs=2",
        f"trainer.batch_size={64 * gpus}",
        "trainer.device=cuda",
        "trainer.precision=bf16",
        "trainer.channels_last=true",
        "trainer.progress=false",
        "model=timm",
        "model.name=resnet18",
        f"hydra.run.dir={tmp / 'ddp'}",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, check=False)
    summary = tmp / "ddp" / "summary.json"
    facts = json.loads(summary.read_text()) if summary.exists() else {}
    return {
        "gpus": gpus,
        "exit_code": p.returncode,
        "wall_s": time.perf_counter() - t0,
        "val_acc": facts.get("val_acc"),
        "world_size": facts.get("world_size"),
        "tail": (p.stdout + p.stderr)[-1500:],
    }


def markdown(res: dict) -> str:
    L = [
        f"# GPU benchmark ({res['device_name']})",
        "",
        f"torch {res['torch']}, CUDA {res['cuda']}, {res['when']}, host 1-minute load "
        f"{res['load_before']:.2f}; measured dense matmul peak: "
        + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in res["peaks"].items()),
        "",
        "Training images/s, `runner.loop.fit` on the runner's TensorLoader (wall clock around "
        "the whole call) vs a hand-written loop on the same uint8 tensor on the device "
        "(medians of A,B,A,B repeats); MFU = the step's FLOPs x steps/s / the measured peak of "
        "the precision its convolutions run in.",
        "",
        "| model | image | batch | variant | runner img/s | hand img/s | ratio | paired | "
        "GFLOP/step | TFLOP/s | MFU (vs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        L.append(
            f"| {r['model']} | {r['image_size']} | {r['batch_size']} | {r['variant']} | "
            f"{r['runner_img_s']:.0f} | {r['hand_img_s']:.0f} | {r['ratio']:.3f} | "
            f"{r['paired_ratio']:.3f} | {r['gflop_per_step']:.1f} | "
            f"{r['achieved_tflops']:.1f} | {r['mfu']:.1%} ({r['mfu_against']}) |"
        )
    if res.get("compile"):
        L += [
            "",
            "torch.compile (default mode) through `runner.loop.fit`:",
            "",
            "| model | variant | compiled img/s | vs eager | compile s |",
            "|---|---|---|---|---|",
        ]
        for c in res["compile"]:
            L.append(
                f"| {c['model']} | {c['variant']} | {c['img_s']:.0f} | "
                f"{c['vs_eager']:.2f}x | {c['compile_s']:.0f} |"
            )
    d = res.get("ddp")
    if d:
        L += [
            "",
            f"DDP: `torchrun --nproc_per_node={d['gpus']} -m runner stage=train` (NCCL, bf16, "
            f"channels_last, resnet18, synthetic data at 64 px): exit {d['exit_code']}, "
            f"{d['wall_s']:.0f} s, val acc {d['val_acc']}",
        ]
    return "\n".join(L) + "\n"


def save(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_results.json").write_text(json.dumps(res, indent=2))
    (out / "gpu_results.md").write_text(markdown(res))


def keep(res: dict, key: str, row: dict, out: Path, line: str) -> None:
    """One measurement: into res[key], onto disk at once (a run cut short keeps it), echoed."""
    res.setdefault(key, []).append(row)
    save(res, out)
    print(line, flush=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU smoke test)")
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="steps per timed epoch")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-variants", default="bf16+channels_last")
    ap.add_argument("--ddp", action="store_true", help="also a torchrun run over every GPU")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine (or --device cpu --quick)")
    models = ["test_resnet"] if a.quick else a.models.split(",")
    variants = QUICK_VARIANTS if a.quick else tuple(a.variants.split(","))
    unknown = [v for v in variants + tuple(a.compile_variants.split(",")) if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}: expected some of {list(VARIANTS)}")
    size, batch, steps, reps = (32, 8, 2, 1) if a.quick else (a.size, a.batch, a.steps, a.reps)
    n = 512 if a.quick else 8192
    out = Path(a.out)
    peaks = {k: matmul_peak(device, k, n) for k in ("fp32", "tf32", "bf16")}
    res = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "load_before": os.getloadavg()[0],
        "peaks": peaks,
        "runs": [],
    }
    for name in models:
        for variant in variants:
            r = measure(name, size, batch, steps, reps, device, variant, peaks)
            keep(
                res,
                "runs",
                r,
                out,
                f"{name:10s} {variant:36s} runner {r['runner_img_s']:.0f} vs hand "
                f"{r['hand_img_s']:.0f} img/s: ratio {r['ratio']:.3f}, MFU {r['mfu']:.1%}",
            )
    if a.ddp and device.type == "cuda":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            res["ddp"] = ddp_run(Path(tmp), torch.cuda.device_count(), a.quick)
        save(res, out)
        print(f"ddp exit {res['ddp']['exit_code']} in {res['ddp']['wall_s']:.0f} s", flush=True)
        if res["ddp"]["exit_code"]:
            print(res["ddp"]["tail"], flush=True)
    if a.compile:
        for name in models:
            for variant in a.compile_variants.split(","):
                eager = next(
                    (
                        r["runner_img_s"]
                        for r in res["runs"]
                        if (r["model"], r["variant"]) == (name, variant)
                    ),
                    None,
                )
                c = measure_compile(name, size, batch, steps, reps, device, variant, eager)
                keep(
                    res,
                    "compile",
                    c,
                    out,
                    f"{name:10s} {variant:36s} compiled {c['img_s']:.0f} img/s, "
                    f"compile {c['compile_s']:.0f} s",
                )
    save(res, out)
    print(f"wrote {out / 'gpu_results.json'} and {out / 'gpu_results.md'}")
    return res


if __name__ == "__main__":
    main()
