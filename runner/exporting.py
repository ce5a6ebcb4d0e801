"""`python -m runner export RUN_DIR --format onnx torchscript safetensors [--out DIR]`.

Writes a folder with a run's final model (runner/inference.py load_final: any stage's, a
recipe's, squeeze's ensemble) in the asked formats, and beside it:
- `config.json` in timm's pretrained-config form (architecture, num_classes, label_names,
  pretrained_cfg with input_size, mean, std, interpolation, crop_pct, crop_mode), so that
  `timm.create_model("local-dir:<folder>", pretrained=True)` builds the timm model with its
  weights (model.safetensors) and `timm.data.resolve_data_config({}, model=m)` gives its
  preprocessing. A custom `_target_` model or an ensemble is no timm architecture: its
  config.json says so, and ONNX/TorchScript are the formats to load it from.
- `README.md`, a model card: data, metrics (with 95% intervals), the recipe's decisions, the
  run's warnings, how to load each file, and the ONNX check's tolerance.

Every ONNX file is run in onnxruntime on export and compared with PyTorch's logits (and
every TorchScript file after reloading it); a difference beyond the tolerance stops the
export. Everything is written into a temporary folder that is renamed to `--out` at the
end: a failed export leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from runner.commands import parse_command
from runner.errors import ConfigError, RunFileError

log = logging.getLogger("runner")
PathLike = Union[str, Path]
FORMATS = ("onnx", "torchscript", "safetensors")
FILES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "safetensors": "model.safetensors",
}
# ONNX/TorchScript vs PyTorch logits: |a - b| <= ATOL + RTOL * |b| everywhere (fp32 on the CPU;
# kernels differ in summation order, so bitwise equality is not expected)
ATOL, RTOL = 1e-4, 1e-3
OPSET = 17
EXTRA = "pip install -e '.[export]'"


@dataclass
class Exported:
    """What an export wrote."""

    path: Path  # the folder
    files: List[str]  # file names in it
    checks: Dict[str, float] = field(default_factory=dict)  # format -> max |difference|
    notes: List[str] = field(default_factory=list)  # what the CLI and the card say
    timm_loadable: bool = False


def _need(formats: Sequence[str]) -> List[str]:
    """Problems with the formats asked for: unknown names, missing optional packages."""
    import importlib.util

    problems = []
    if not formats:
        problems.append(f"no --format given; expected one or more of {', '.join(FORMATS)}")
    for f in formats:
        if f not in FORMATS:
            problems.append(
                f"--format {f!r} is not an export format; expected {', '.join(FORMATS)}"
            )
    need = {"onnx": ("onnx", "onnxruntime"), "safetensors": ("safetensors",)}
    for f in dict.fromkeys(formats):
        missing = [m for m in need.get(f, ()) if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(
                f"--format {f} needs {' and '.join(missing)}, not installed: {EXTRA} "
                "(the export extra)"
            )
    return problems


def export(
    run_dir: PathLike,
    formats: Sequence[str] = ("onnx",),
    out: Optional[PathLike] = None,
    *,
    trust_run_configs: bool = False,
    opset: int = OPSET,
) -> Exported:
    """Export the final model of `run_dir` (a run directory or a model file) in `formats`
    into the folder `out` (default: ./export-<run dir name>), which must not exist or be
    empty. Bad input (unknown format, a missing extra, an unfinished run, a model that cannot
    be traced, an ONNX file that disagrees with PyTorch) raises ConfigError; nothing is left."""
    from runner.inference import load_final

    formats = list(dict.fromkeys([str(f) for f in formats]))
    problems = _need(formats)
    src = Path(run_dir).expanduser()
    target = Path(out).expanduser() if out is not None else Path.cwd() / f"export-{src.stem}"
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        problems.append(
            f"--out {target} already exists and is not an empty folder: choose another "
            "folder (an export never overwrites files)"
        )
    if problems:
        raise ConfigError(problems)
    fm = load_final(src, "cpu", trust_run_configs)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        res = _write(fm, formats, tmp, opset)
        _follow_umask(tmp)
        if target.exists():
            target.rmdir()  # empty (checked above)
        tmp.rename(target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, RunFileError):
            raise
        name = Path(e.filename).name if e.filename else ""
        raise RunFileError(
            target / name if name and not name.startswith(".") else target,
            e,
            f"Nothing was exported ({target} was not made: no part of an export is left); "
            f"the run {src} is untouched",
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res.path = target
    return res


def _follow_umask(folder: Path) -> None:
    """The folder and its files as mkdir and open() make them (0777 / 0666 less the umask):
    mkdtemp's 0700, and the 0600 of files some writers make through a temp file, would hide
    an export in a shared folder from the group."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def _write(fm, formats: List[str], folder: Path, opset: int) -> Exported:
    import torch

    res = Exported(folder, [])
    model = fm.module.float().eval()
    c, h, w = fm.pre.input_size
    g = torch.Generator().manual_seed(0)
    # traced on one batch, checked on another (other values, another batch size): a trace
    # that baked in its example's values or batch size fails the check
    x = torch.randn(2, c, h, w, generator=g)
    x_check = torch.randn(3, c, h, w, generator=g)
    with torch.inference_mode():
        ref = model(x_check).float()
    res.timm_loadable = fm.architecture is not None
    for f in formats:
        path = folder / FILES[f]
        if f == "onnx":
            res.checks[f] = _onnx(model, x, x_check, ref, path, opset, fm)
        elif f == "torchscript":
            res.checks[f] = _torchscript(model, x, x_check, ref, path, fm)
        else:
            _safetensors(model, path)
        res.files.append(path.name)
    if res.timm_loadable and "safetensors" not in formats:
        res.notes.append(
            "timm.create_model('local-dir:...') needs the weights as model.safetensors: "
            "export with --format safetensors too"
        )
    if not res.timm_loadable:
        what = (
            "an ensemble"
            if fm.kind == "ensemble"
            else f"a custom model ({fm.meta.get('target') or fm.config.model.get('_target_')})"
        )
        res.notes.append(
            f"{what}, not a timm architecture: timm.create_model('local-dir:...') cannot load "
            "it; use model.onnx or model.torchscript.pt"
        )
    if fm.pre.pipeline == "tensor":
        res.notes.append(
            f"the run's {fm.meta.get('data_kind')} images were uint8 tensors resized by torch "
            f"({fm.pre.interpolation}); timm's transform resizes with PIL, which differs "
            "slightly (python -m runner predict uses the run's own resize)"
        )
    config = timm_config(fm)
    _save(folder / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    _save(folder / "README.md", model_card(fm, res, config).encode())
    res.files += ["config.json", "README.md"]
    return res


def _close(a, b) -> tuple:
    """(within the tolerance, max |a - b|)."""
    import torch

    a = torch.as_tensor(a).float()
    if a.shape != b.shape:
        return False, math.inf
    diff = (a - b).abs()
    return bool((diff <= ATOL + RTOL * b.abs()).all()), float(diff.max())


def _onnx(model, x, x_check, ref, path: Path, opset: int, fm) -> float:
    import warnings

    import onnxruntime as ort
    import torch

    buf = io.BytesIO()  # serialised here, written by _save: a failed write names the file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation note
            torch.onnx.export(
                model,
                (x,),
                buf,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    except Exception as e:  # noqa: BLE001 -- any exporter failure: one message naming the model
        raise ConfigError(
            f"export --format onnx: {fm.file}: the model cannot be exported to ONNX "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); try "
            "--format torchscript or safetensors"
        ) from e
    _save(path, buf.getvalue())
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x_check.numpy()})[0]
    except Exception as e:  # noqa: BLE001 -- e.g. a trace that lost its input (a constant)
        raise ConfigError(
            f"export --format onnx: {fm.file}: the exported file does not run in onnxruntime "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}), so it cannot be "
            "checked against PyTorch: its outputs differ from the model's; the model's forward "
            "depends on more than its input's shape (e.g. it leaves torch), so the trace is "
            "not the model"
        ) from e
    ok, d = _close(got, ref)
    if not ok:
        raise ConfigError(
            f"export --format onnx: {fm.file}: onnxruntime's logits differ from PyTorch's by "
            f"up to {d:.3g}, beyond the tolerance |a - b| <= {ATOL:g} + {RTOL:g} * |b|; the "
            "export is not written (the model's forward depends on more than its input's "
            "shape, e.g. it leaves torch, so the trace is not the model)"
        )
    return d


def _torchscript(model, x, x_check, ref, path: Path, fm) -> float:
    import warnings

    import torch

    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings: checked below on the saved file
            traced = torch.jit.trace(model, x, check_trace=False)
            buf = io.BytesIO()
            # to memory: torch's file writer aborts the process when a write fails
            torch.jit.save(traced, buf)
            _save(path, buf.getvalue())
            got = torch.jit.load(str(path))(x_check)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 -- a model the tracer cannot follow
        raise ConfigError(
            f"export --format torchscript: {fm.file}: the model cannot be traced "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); try "
            "--format onnx or safetensors"
        ) from e
    ok, d = _close(got.float(), ref)
    if not ok:
        raise ConfigError(
            f"export --format torchscript: {fm.file}: the traced model's logits differ from "
            f"the model's by up to {d:.3g} (beyond {ATOL:g} + {RTOL:g} * |b|): its forward "
            "depends on more than the input's shape (data-dependent control flow)"
        )
    return d


def _safetensors(model, path: Path) -> None:
    from safetensors.torch import save

    # clones: tensors that share memory (tied weights) are refused by save_file
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    _save(path, save(state, metadata={"format": "pt"}))


def _save(path: Path, data: bytes) -> None:
    """One export file, through a temp file and a rename (runner/output.py): a full disk or a
    size limit is an OSError naming the condition, and leaves no part of the file."""
    from runner.output import _atomic_write_bytes

    try:
        _atomic_write_bytes(path, data)
    except OSError as e:  # the temp file's name is no use to the reader: the file's is
        raise OSError(e.errno, e.strerror, str(path)) from e


# ----------------------------------------------------------------------------- config.json
def timm_config(fm) -> Dict[str, Any]:
    """timm's pretrained-config form (as timm's push_to_hub writes config.json), with the
    run's preprocessing and class names; for a model timm cannot build, the same facts under
    the `_target_` (or "ensemble") as its architecture."""
    pre = fm.pre
    pcfg: Dict[str, Any] = {}
    model_args: Dict[str, Any] = {}
    if fm.architecture is not None:
        base = dict(getattr(fm.module, "pretrained_cfg", None) or {})
        for k in ("architecture", "url", "hf_hub_id", "file", "source", "state_dict"):
            base.pop(k, None)
        pcfg.update({k: v for k, v in base.items() if _jsonable(v)})
        model_args = {k: v for k, v in (fm.meta.get("model_kwargs") or {}).items() if _jsonable(v)}
        model_args["in_chans"] = pre.channels
    pcfg.update(
        {
            "tag": "recipe-runner",
            "input_size": list(pre.input_size),
            "interpolation": pre.interpolation,
            "crop_pct": pre.crop_pct,
            "crop_mode": pre.crop_mode,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "num_classes": fm.num_classes,
        }
    )
    arch = fm.architecture or (
        "ensemble" if fm.kind == "ensemble" else str(fm.config.model.get("_target_"))
    )
    out: Dict[str, Any] = {
        "architecture": arch,
        "num_classes": fm.num_classes,
        "label_names": list(fm.class_names),
        "pretrained_cfg": pcfg,
    }
    nf = getattr(fm.module, "num_features", None)
    if isinstance(nf, int):
        out["num_features"] = nf
    if model_args:
        out["model_args"] = model_args
    out["recipe_runner"] = {
        "timm_loadable": fm.architecture is not None,
        "kind": fm.kind,
        "pipeline": pre.pipeline,
        "source": str(fm.file),
        "members": fm.members,
    }
    return out


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- the card
def _model_run(fm) -> Optional[Path]:
    """The run directory that trained the model file (an ensemble: its first member's)."""
    if fm.kind == "ensemble" and fm.members:
        return Path(str(fm.members[0].get("run")))
    from runner.inference import trained_run

    return trained_run(fm.file)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _metric_lines(fm, summaries: List[Dict[str, Any]], data: Dict[str, Any]) -> List[str]:
    lines = []
    n_val = data.get("num_val")
    acc = fm.reported_acc
    if isinstance(acc, (int, float)):
        from runner.metrics import wilson_interval

        ok = isinstance(n_val, int) and n_val > 0
        ci = wilson_interval(round(acc * n_val), n_val) if ok else None
        lines.append(
            f"- validation accuracy {acc:.4f}"
            + (f" (95% Wilson interval {ci[0]:.4f} to {ci[1]:.4f}, n={n_val})" if ci else "")
            + ": validation chose this model, so it is optimistic"
        )
    seen = set()
    for s in summaries:  # a test split's figures (and their intervals), when the run has them
        for k, v in sorted(s.items()):
            if not k.startswith("test") or k in seen or isinstance(v, bool) or v is None:
                continue
            seen.add(k)
            if isinstance(v, dict):
                parts = [f"{a}={_fmt(b)}" for a, b in v.items() if not isinstance(b, dict)]
                lines.append(f"- {k}: " + ", ".join(parts))
            else:
                lines.append(f"- {k}: {_fmt(v)}")
        for k in ("balanced_acc", "macro_f1", "val_balanced_acc", "val_macro_f1"):
            if isinstance(s.get(k), (int, float)) and k not in seen:
                seen.add(k)
                lines.append(f"- {k}: {s[k]:.4f}")
    return lines or ["- (the run records no accuracy for this model)"]


def _decisions(fm, summary: Dict[str, Any]) -> List[str]:
    out = []
    if fm.what:
        out.append(f"- final model: {fm.what}")
    for r in summary.get("stages") or []:  # a recipe: one line a stage
        acc = r.get("val_acc")
        out.append(
            f"- {r.get('stage')}: val acc {acc:.4f}"
            if isinstance(acc, (int, float))
            else f"- {r.get('stage')}: no accuracy"
        )
    if fm.kind == "ensemble":
        out.append(
            f"- an ensemble of {len(fm.members)}, averaging its members' logits: "
            + ", ".join(str(m.get("run")) for m in fm.members)
        )
    return out or ["- (a single run: no recipe decisions)"]


def _warnings(fm, summary: Dict[str, Any]) -> List[str]:
    """warn/fail verdicts of the run, a recipe's stages, and the run that trained the model."""
    from runner.output import read_checks

    dirs: List[Path] = [Path(fm.run_dir)] if fm.run_dir else []
    dirs += [Path(str(r["dir"])) for r in summary.get("stages") or [] if r.get("dir")]
    trained = _model_run(fm)
    if trained is not None:
        dirs.append(trained)
    out, seen = [], set()
    for d in dirs:
        if d in seen or not d.is_dir():
            continue
        seen.add(d)
        try:
            checks = read_checks(d)
        except ConfigError:
            continue
        for c in checks:
            if c.get("status") in ("warn", "fail"):
                where = "" if fm.run_dir and d == Path(fm.run_dir) else f" [{d.name}]"
                out.append(f"- {c.get('name')} ({c.get('status')}){where}: {c.get('message')}")
    return out or ["- none recorded"]


def model_card(fm, res: Exported, config: Dict[str, Any]) -> str:
    from runner import jobs

    summary = jobs.summary(fm.run_dir) if fm.run_dir else {}
    trained = _model_run(fm)
    own = jobs.summary(trained) if trained is not None and trained.is_dir() else {}
    data = summary.get("data") or own.get("data") or {}
    pre = fm.pre
    name = config["architecture"]
    lines = [
        f"# {name}: {fm.num_classes} classes, exported by recipe-runner",
        "",
        f"From `{fm.run_dir or fm.file}` ({fm.stage or 'model file'}), model file `{fm.file}`.",
        "",
        "## Data",
        f"- data={fm.meta.get('data_kind') or data.get('kind')}, "
        f"{data.get('num_train', '?')} train / {data.get('num_val', '?')} val images",
        f"- classes: {', '.join(fm.class_names)}",
        "",
        "## Metrics",
        # an ensemble's member run scored that member, not the ensemble: its figures stay out
        *_metric_lines(fm, [summary, own if fm.kind != "ensemble" else {}], data),
        "",
        "## Decisions",
        *_decisions(fm, summary),
        "",
        "## Known warnings (checks.json)",
        *_warnings(fm, summary),
        "",
        "## Preprocessing (what the model expects)",
        f"- input {pre.input_size[0]}x{pre.input_size[1]}x{pre.input_size[2]} (channels, "
        f"height, width), {pre.mode} images, float32",
        f"- resize ({pre.interpolation}) and {pre.crop_mode} crop, crop_pct {pre.crop_pct}",
        f"- scaled to [0, 1], then normalised with mean {pre.mean} and std {pre.std}",
        "",
        "## Files",
    ]
    for f in res.files:
        lines.append(f"- `{f}`" + _how(f, res))
    if res.checks:
        told = ", ".join(f"{k} max |diff| {v:.2e}" for k, v in res.checks.items())
        lines += [
            "",
            f"Checked on export against PyTorch's logits (fp32, CPU): {told}; tolerance "
            f"|a - b| <= {ATOL:g} + {RTOL:g} * |b|.",
        ]
    if res.notes:
        lines += ["", "## Notes", *[f"- {n}" for n in res.notes]]
    return "\n".join(lines) + "\n"


def _how(f: str, res: Exported) -> str:
    if f == "model.safetensors" and res.timm_loadable:
        return (
            ': `m = timm.create_model("local-dir:<this folder>", pretrained=True)`, then '
            "`timm.data.create_transform(**timm.data.resolve_data_config({}, model=m))`"
        )
    if f == "model.onnx":
        return ': onnxruntime, input "input" [N, C, H, W] (preprocessed), output "logits"'
    if f == "model.torchscript.pt":
        return ": `torch.jit.load(path)(x)`, x preprocessed [N, C, H, W]"
    if f == "config.json":
        return ": architecture, label names and preprocessing (timm's pretrained-config form)"
    return ""


# ----------------------------------------------------------------------------- the CLI
def export_main(argv: Sequence[str]) -> int:
    """`python -m runner export RUN_DIR --format onnx [torchscript safetensors] [--out DIR]`."""
    p = argparse.ArgumentParser(
        prog="python -m runner export",
        description="Export a run's final model (ONNX, TorchScript, safetensors) into a folder "
        "with a timm-style config.json and a model card (README.md).",
    )
    p.add_argument("run_dir", help="a run directory (any stage, a recipe) or a model file")
    p.add_argument(
        "--format",
        nargs="+",
        default=["onnx"],
        metavar="FORMAT",
        help=f"one or more of {', '.join(FORMATS)} (default onnx)",
    )
    p.add_argument("--out", default=None, help="the folder to write (new or empty)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    a, code = parse_command(p, argv)
    if a is None:
        return code
    formats = [f for x in a.format for f in x.split(",") if f]
    # a ConfigError: commands.run_command says it and exits 2
    res = export(a.run_dir, formats, a.out, trust_run_configs=a.trust_run_configs, opset=a.opset)
    print(f"exported {', '.join(res.files)} -> {res.path}")
    for k, v in res.checks.items():
        print(
            f"{k}: matches PyTorch's logits (max |diff| {v:.2e}; tolerance "
            f"|a - b| <= {ATOL:g} + {RTOL:g} * |b|)"
        )
    for n in res.notes:
        print(f"note: {n}")
    return 0
