"""`python -m runner predict RUN_DIR INPUTS... | --split val`: a run's final model on images.

Inputs are image files and folders (searched recursively for timm's image extensions), or a
split of the run's own data (`--split train|val|test`, rebuilt from the run's config exactly as
it trained). Every image goes through the run's own eval preprocessing (runner/inference.py
Preprocess: its input size, channels, mean/std, resize filter and crop; digits/synthetic
images through the same torch resize as their tensors), in batches, on the GPU when there is
one, in the run's eval precision. Predicting the run's validation split gives back the
accuracy it reports for that model, to the image.

One CSV row per input: path, predicted label and its probability, the top k labels and
probabilities, for a split the true label; an input that cannot be read gets a row with its
error (never skipped). `--tta flip` averages the logits of each image and its mirror image.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from runner.commands import parse_command
from runner.errors import ConfigError

log = logging.getLogger("runner")
PathLike = Union[str, Path]
SPLITS = ("train", "val", "test")
TTA = ("flip",)


class Predictions(list):
    """The rows (one dict per input, the CSV's columns), and what they add up to."""

    def __init__(self, rows, *, out=None, split=None, accuracy=None, reported=None, model=None):
        super().__init__(rows)
        self.out: Optional[Path] = out  # the CSV written, None when not written
        self.split: Optional[str] = split
        self.accuracy: Optional[float] = accuracy  # on a split: the fraction predicted right
        self.reported: Optional[float] = reported  # the accuracy the run reports for the model
        self.model = model  # runner.inference.FinalModel

    @property
    def errors(self) -> List[Dict[str, Any]]:
        return [r for r in self if r.get("error")]


@dataclass
class _Item:
    key: str  # the path (files) or the split's name of the image
    label: Optional[int] = None  # the true class, for a split


def _problems(inputs, split, tta, topk, batch_size) -> List[str]:
    out = []
    if split is not None and split not in SPLITS:
        out.append(f"--split {split!r} is not a split; expected one of {', '.join(SPLITS)}")
    if split is None and not inputs:
        out.append("no inputs: give image files or folders, or --split val (the run's own data)")
    if split is not None and inputs:
        out.append("give image files/folders or --split, not both")
    if tta is not None and tta not in TTA:
        out.append(f"--tta {tta!r} is not a test-time augmentation; expected {', '.join(TTA)}")
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        out.append(f"--topk {topk!r} must be an integer >= 1")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        out.append(f"--batch-size {batch_size!r} must be an integer >= 1")
    return out


def image_files(inputs: Sequence[PathLike]) -> List[Path]:
    """The files to predict: each file given, and the image files in each folder (sorted,
    recursively). A missing path or a folder without images is a ConfigError naming it."""
    from runner.data import image_extensions

    exts = image_extensions()
    files, problems = [], []
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts)
            if not found:
                problems.append(
                    f"{p}: a folder with no images (searched recursively for "
                    f"{', '.join(sorted(exts))})"
                )
            files += found
        else:
            problems.append(f"{p}: no such file or folder")
    if problems:
        raise ConfigError(problems)
    return files


def predict(
    run_dir: PathLike,
    inputs: Sequence[PathLike] = (),
    *,
    split: Optional[str] = None,
    out: Optional[PathLike] = None,
    batch_size: Optional[int] = None,
    topk: int = 5,
    tta: Optional[str] = None,
    device: str = "auto",
    progress: bool = False,
    trust_run_configs: bool = False,
    num_workers: Optional[int] = None,
) -> Predictions:
    """Predict `inputs` (image files or folders) or the run's `split` with the final model of
    `run_dir` (a run directory, or a model file: best.pt, ensemble.pt). Returns the rows (a
    list of dicts) and writes them to `out` as CSV when given. Bad input (an unfinished run,
    a folder without images, an unknown split) raises ConfigError before anything is written."""
    from runner.inference import load_final

    problems = _problems(inputs, split, tta, topk, batch_size)
    if problems:
        raise ConfigError(problems)
    files = image_files(inputs) if split is None else []
    fm = load_final(run_dir, device, trust_run_configs)
    k = min(topk, fm.num_classes)
    bs = batch_size or int((fm.config.get("trainer") or {}).get("batch_size", 64)) * 2
    if split is None:
        rows = _predict_files(fm, files, bs, k, tta, progress, num_workers)
        accuracy = None
    else:
        with _eval_threads(fm):
            rows = _predict_split(fm, split, bs, k, tta, progress, trust_run_configs)
        scored = [r for r in rows if not r.get("error")]
        accuracy = sum(r["correct"] for r in scored) / len(scored) if scored else None
    result = Predictions(
        rows,
        split=split,
        accuracy=accuracy,
        reported={"val": fm.reported_acc, "test": fm.reported_test_acc}.get(split or ""),
        model=fm,
    )
    if out is not None:
        from runner.output import write_csv_file

        result.out = write_csv_file(Path(out), rows, columns(k, split is not None))
    return result


@contextlib.contextmanager
def _eval_threads(fm):
    """The run's own CPU thread count while its split is predicted: oneDNN's kernels sum in an
    order that depends on the threads (and the batch: the default batch is the run's eval
    batch), and a last-digit difference can flip a near tie. Restored after."""
    import torch

    threads = (fm.config.get("trainer") or {}).get("threads")
    before = torch.get_num_threads()
    if fm.device.type == "cpu" and threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def columns(k: int, with_truth: bool) -> List[str]:
    cols = ["path", "label", "prob"]
    if with_truth:
        cols += ["true_label", "correct"]
    for i in range(1, k + 1):
        cols += [f"top{i}_label", f"top{i}_prob"]
    return cols + ["error"]


# ----------------------------------------------------------------------------- the batches
def _forward(fm, x, tta: Optional[str]):
    """Softmax probabilities of a batch, in the run's eval precision (its val_acc's)."""
    import torch

    from runner.loop import autocast

    x = x.to(fm.device, non_blocking=True)
    with torch.inference_mode(), autocast(fm.device, fm.precision):
        logits = fm.module(x).float()
        if tta == "flip":  # the mirror image too: mean logits (as an ensemble averages)
            logits = (logits + fm.module(x.flip(-1)).float()) / 2
    return logits.softmax(1).cpu()


def _row(fm, item: _Item, probs, k: int) -> Dict[str, Any]:
    names = fm.class_names
    top_p, top_i = probs.topk(k)
    row: Dict[str, Any] = {
        "path": item.key,
        "label": names[int(top_i[0])],
        "prob": round(float(top_p[0]), 6),
    }
    if item.label is not None:
        row["true_label"] = names[item.label]
        row["correct"] = int(int(top_i[0]) == item.label)
    for j in range(k):
        row[f"top{j + 1}_label"] = names[int(top_i[j])]
        row[f"top{j + 1}_prob"] = round(float(top_p[j]), 6)
    row["error"] = ""
    return row


def _error_row(item: _Item, error: str, names: List[str]) -> Dict[str, Any]:
    row: Dict[str, Any] = {"path": item.key, "label": "", "prob": ""}
    if item.label is not None:
        row.update(true_label=names[item.label], correct="")
    row["error"] = error
    return row


class _Progress:
    """tqdm on stderr when asked (and a terminal's or a log's line per batch otherwise)."""

    def __init__(self, total: int, on: bool, what: str):
        self.bar = None
        if on:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="img", file=sys.stderr)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Images:
    """Map-style dataset of (index, normalised tensor or the error text)."""

    def __init__(self, load, n: int):
        self.load, self.n = load, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from runner.data import _bomb_error

        try:
            return i, self.load(i)
        except (OSError, ValueError, SyntaxError, _bomb_error()) as e:  # PIL's, for bad files
            return i, f"{type(e).__name__}: {e}"


def _collate(batch):
    return batch


def _run(fm, items: List[_Item], load, bs, k, tta, progress, workers, what) -> List[Dict]:
    """Every item through `load` (index -> tensor) and the model, in batches, in order."""
    import torch
    from torch.utils.data import DataLoader

    rows: List[Optional[Dict]] = [None] * len(items)
    bar = _Progress(len(items), progress, what)
    loader = DataLoader(
        _Images(load, len(items)),
        batch_size=bs,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=fm.device.type == "cuda",
    )
    try:
        for batch in loader:
            good = [(i, x) for i, x in batch if not isinstance(x, str)]
            for i, x in batch:
                if isinstance(x, str):
                    log.warning("predict: unreadable image %s: %s", items[i].key, x)
                    rows[i] = _error_row(items[i], x, fm.class_names)
            if good:
                probs = _forward(fm, torch.stack([x for _, x in good]), tta)
                for (i, _), p in zip(good, probs):
                    rows[i] = _row(fm, items[i], p, k)
            bar.update(len(batch))
    finally:
        bar.close()
    return rows  # type: ignore[return-value]


def _workers(n: int, fm, given: Optional[int]) -> int:
    if given is not None:
        return int(given)
    from runner.data import default_workers

    # a few hundred images decode faster than worker processes start
    return default_workers(fm.device, training=False) if n > 512 else 0


def _predict_files(fm, files: List[Path], bs, k, tta, progress, workers) -> List[Dict]:
    from runner.data import open_image

    tf = fm.pre.transform()
    d = fm.config.get("data") or {}
    limits = (int(d.get("max_image_pixels") or 0), int(d.get("max_image_bytes") or 0))

    def load(i: int):
        with open_image(files[i], *limits) as im:
            return tf(im)

    items = [_Item(str(f)) for f in files]
    log.info("predict: %d image file(s) with %s", len(files), fm.file)
    return _run(fm, items, load, bs, k, tta, progress, _workers(len(files), fm, workers), "predict")


def _predict_split(fm, split: str, bs, k, tta, progress, trust: bool) -> List[Dict]:
    """The run's own split, rebuilt from its config (its data, split seed, input size and
    normalisation), each image as the run's eval loop saw it."""
    from omegaconf import OmegaConf

    from runner.data import TensorSplit, build_data
    from runner.lineage import flatten
    from runner.targets import refuse_untrusted, untrusted_code

    cfg = fm.config
    stored = flatten({"data": OmegaConf.to_container(cfg.data, resolve=False)})
    refuse_untrusted(untrusted_code(stored, {}), f"{fm.file} (its stored data config)", trust)
    data = build_data(cfg.data, fm.meta.get("cwd"), model=cfg.model)
    part = getattr(data, split, None)
    if part is None:
        raise ConfigError(
            f"--split {split}: the run's data (data={data.kind}) has no {split} split; "
            "its splits: " + ", ".join(s for s in SPLITS if getattr(data, s, None) is not None)
        )
    fp = fm.meta.get("data_fingerprint")
    if fp and fp != data.fingerprint:
        log.warning(
            "predict: the data read now differs from what the run trained on (fingerprint "
            "%s, the run's %s): the split is not the run's",
            data.fingerprint,
            fp,
        )
    labels = part.labels
    items = [_Item(part.name(i), int(labels[i])) for i in range(len(part))]
    if isinstance(part, TensorSplit):
        load = lambda i: part.get([i])[0][0]  # as TensorLoader normalises (same ops)
    else:
        load = lambda i: part.load(i)[0]  # the split's eval transform
    log.info("predict: the run's %s split (%d images) with %s", split, len(items), fm.file)
    return _run(fm, items, load, bs, k, tta, progress, 0, f"predict {split}")


# ----------------------------------------------------------------------------- the CLI
def predict_main(argv: Sequence[str]) -> int:
    """`python -m runner predict RUN_DIR [INPUTS...] [--split val] [--out predictions.csv]`."""
    p = argparse.ArgumentParser(
        prog="python -m runner predict",
        description="Predict image files/folders, or a split of the run's own data, with a "
        "run's final model and its exact eval preprocessing; writes a CSV (path, label, "
        "prob, top-k; the true label for a split; an error column for unreadable inputs).",
    )
    p.add_argument("run_dir", help="a run directory (any stage, a recipe) or a model file")
    p.add_argument("inputs", nargs="*", help="image files and folders (searched recursively)")
    p.add_argument("--split", default=None, help="train, val or test: the run's own data")
    p.add_argument("--out", default="predictions.csv", help="the CSV to write")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's eval batch")
    p.add_argument("--topk", type=int, default=5, help="how many labels per row (default 5)")
    p.add_argument("--tta", default=None, help="flip: average with the mirror image")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a, code = parse_command(p, argv)
    if a is None:
        return code
    _console_log()
    res = predict(  # a ConfigError: commands.run_command says it and exits 2
        a.run_dir,
        a.inputs,
        split=a.split,
        out=a.out,
        batch_size=a.batch_size,
        topk=a.topk,
        tta=a.tta,
        device=a.device,
        progress=not a.no_progress and sys.stderr.isatty(),
        trust_run_configs=a.trust_run_configs,
    )
    n_bad = len(res.errors)
    line = f"{len(res)} prediction(s) -> {res.out}"
    if n_bad:
        line += f"; {n_bad} input(s) could not be read (their rows hold the error)"
    print(line)
    if res.accuracy is not None:
        msg = f"{res.split} accuracy {res.accuracy:.4f} ({len(res) - n_bad} images)"
        if res.reported is not None:
            msg += f"; the run reports {res.reported:.4f} for this model"
        print(msg)
    return 0


def _console_log() -> None:
    """The runner's warnings (unreadable files, another data fingerprint) on stderr."""
    logger = logging.getLogger("runner")
    if not logger.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
