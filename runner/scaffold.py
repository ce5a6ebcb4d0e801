"""`python -m runner init <dir>`: a starter experiment repo that extends the packaged configs.

    <dir>/conf/experiment/example.yaml   an experiment: only what differs from the defaults
    <dir>/conf/data/example.yaml         your own data option, beside the packaged ones
    <dir>/README.md                      how to run it, what goes where
    <dir>/.gitignore                     outputs/, multirun/, mlruns/ stay out of git

Run it from anywhere with `python -m runner --config-dir <dir>/conf experiment=example`.
Existing files are never overwritten (exit 2, naming them) unless --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

EXPERIMENT = """\
# @package _global_
# python -m runner --config-dir conf experiment=example
# An experiment holds only what differs from the packaged defaults (python -m runner --help
# lists every group and option; add --cfg job to print the composed config without running).
defaults:
  - override /data: example      # conf/data/example.yaml, next to the packaged data options
  - override /model: tiny_cnn    # or: resnet18, or timm with model.name=<any timm model>
  - override /stage: baseline    # recipe stage 2: skeleton, dumb baselines, sanity checks
name: example
seed: 0
trainer:
  epochs: 5
  batch_size: 64
"""

DATA = """\
# python -m runner --config-dir conf data=example
# Your own data option. It starts from the packaged `digits` (scikit-learn's bundled 8x8
# handwritten digits, no download) and changes one thing; for your images use instead:
#   kind: imagefolder
#   root: /path/to/images     # class folders, or train/ and val/ each with class folders
#   image_size: 64
# Give your options new names: for a name the package already has (digits, synthetic, ...)
# Hydra finds the packaged file first.
defaults:
  - digits
image_size: 24
"""

README = """\
# {name}

Experiments run with recipe-runner (`python -m runner`): the configs live here, the code
that runs them is the installed package.

```bash
python -m runner --config-dir conf experiment=example                  # run the example
python -m runner --config-dir conf experiment=example trainer.epochs=20  # override a key
python -m runner --config-dir conf experiment=example --cfg job         # show the config only
python -m runner --config-dir conf experiment=example -m seed=0,1,2     # a sweep over seeds
python -m runner --help                                                 # stages, groups, options
```

- `conf/experiment/*.yaml`: one file per experiment (`# @package _global_`), holding only
  what differs from the packaged defaults; select with `experiment=<file name>`.
- `conf/<group>/*.yaml` (e.g. `conf/data/`): your own options for a packaged group, used
  like the packaged ones (`data=example`). Use new names: for a name the package already
  has, Hydra finds the packaged file first.
- Each run writes `outputs/<date>/<time>/` (`report.html`, `summary.json`, `checks.json`,
  `metrics.csv`, `checkpoints/`); sweeps write `multirun/`. Both are git-ignored: record
  what mattered (the config, the figures) in commits or notes instead.
- Exit codes: 0 finished and no check failed, 1 a check failed, 2 bad config or input.
"""

GITIGNORE = """\
# run directories (reports, metrics, checkpoints) and local tracking stores
outputs/
multirun/
mlruns/
__pycache__/
"""


def starter_files(name: str) -> Dict[str, str]:
    """Relative path -> contents of the starter experiment repo."""
    return {
        "conf/experiment/example.yaml": EXPERIMENT,
        "conf/data/example.yaml": DATA,
        "README.md": README.format(name=name),
        ".gitignore": GITIGNORE,
    }


def init_repo(target: Path, force: bool = False) -> List[Path]:
    """Write the starter files under `target`; returns their paths. Raises FileExistsError
    listing every file that exists already (nothing is written then) unless `force`."""
    files = {target / rel: text for rel, text in starter_files(target.resolve().name).items()}
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise FileExistsError(existing)
    for p, text in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return list(files)


def init_main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runner init",
        description="Write a starter experiment repo: conf/experiment/example.yaml (extends the "
        "packaged configs), conf/data/example.yaml, README.md and .gitignore.",
    )
    ap.add_argument("dir", help="folder of the experiment repo (created if missing)")
    ap.add_argument("--force", action="store_true", help="overwrite starter files that exist")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors are bad input (exit 2), --help is 0
        return 0 if e.code == 0 else 2
    target = Path(args.dir).expanduser()
    if target.exists() and not target.is_dir():
        print(
            f"config error: {target} is a file; expected a folder for the experiment repo",
            file=sys.stderr,
        )
        return 2
    try:
        written = init_repo(target, args.force)
    except FileExistsError as e:
        names = ", ".join(str(p) for p in e.args[0])
        print(
            f"config error: {names} already exist(s); nothing was written. Pass --force to "
            "overwrite the starter files, or choose another folder",
            file=sys.stderr,
        )
        return 2
    for p in written:
        print(f"wrote {p}")
    conf = target / "conf"
    print(f"\nnext: python -m runner --config-dir {conf} experiment=example")
    return 0
