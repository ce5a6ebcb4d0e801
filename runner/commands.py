"""`python -m runner <command> ...`: commands that are not a Hydra run (a plain dispatch dict).

runner/__main__.py sends `argv[0] in COMMANDS` here; everything else goes to Hydra.
Each command takes its own argv and returns the exit code (DESIGN.md: 2 = bad input).
"""

from __future__ import annotations

import sys
from typing import Callable, Dict, List


def parse_command(p, argv) -> tuple:
    """predict's and export's command line: `p` plus --trust-run-configs, parsed; (args, None),
    or (None, exit code): argparse's usage errors are bad input (2), --help is 0."""
    p.add_argument(
        "--trust-run-configs",
        action="store_true",
        help="build a custom _target_ the run's checkpoint names (its code: trust its folder)",
    )
    try:
        return p.parse_args(list(argv)), None
    except SystemExit as e:
        return None, 0 if e.code == 0 else 2


def _aggregate(args: List[str]) -> int:
    from runner.aggregate import aggregate_main

    return aggregate_main(args)


def _init(args: List[str]) -> int:
    from runner.scaffold import init_main

    return init_main(args)


def _predict(args: List[str]) -> int:
    from runner.prediction import predict_main

    return predict_main(args)


def _export(args: List[str]) -> int:
    from runner.exporting import export_main

    return export_main(args)


def _lr_range(args: List[str]) -> int:
    from runner.lrfind import lr_range_main

    return lr_range_main(args)


COMMANDS: Dict[str, Callable[[List[str]], int]] = {
    "aggregate": _aggregate,
    "init": _init,
    "predict": _predict,
    "export": _export,
    "lr-range": _lr_range,
}


def run_command(name: str, args: List[str]) -> int:
    if name not in COMMANDS:
        print(
            f"config error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    from runner.errors import ConfigError, RunFileError  # light: no torch

    try:
        return COMMANDS[name](list(args))
    except ConfigError as e:  # bad input to a command: one message, exit 2
        print(f"config error: {e}", file=sys.stderr)
        return e.exit_code
    except RunFileError as e:  # a file it writes (an export, predictions): one message, exit 3
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
