"""Writes docs/quickstart.ipynb from the cells below and executes it with a real kernel, so the
file holds its outputs: `python docs/make_quickstart.py [OUT.ipynb [WORKDIR]]` (WORKDIR: where
the notebook's runs write outputs/, a temp folder by default). tests/test_notebook.py runs it.
Needs the `notebook` extra (nbclient, nbformat, ipykernel)."""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
cells = [
    md(
        "# recipe-runner from Python: a quickstart\n\n"
        "Every stage the command line runs, `runner.run(stage, overrides)` runs from Python: "
        "the same configs, the same run directory (`outputs/<date>/<time>/`), and a `Run` "
        "object back with the verdicts, the figures, the metrics and the model. This notebook "
        "walks the first steps of the recipe on scikit-learn's bundled digits (no download): "
        "look at the data, a baseline with its sanity checks, then a short recipe."
    ),
    code("import runner\n\nrunner.__version__"),
    md(
        "## 1. Become one with the data\n\n`stage=inspect` reads every image once and checks "
        "the data: duplicates, leakage between the splits, class balance, outliers, likely "
        "label errors. `quiet=True` keeps the console log in `rec.output` instead of printing it."
    ),
    code('insp = runner.run("inspect", quiet=True)\ninsp'),
    code('[(v["name"], v["status"]) for v in insp.verdicts]'),
    md(
        "## 2. Skeleton and dumb baselines\n\nThe default stage: a small CNN you cannot get "
        "wrong, trained end to end, with the recipe's sanity checks (loss at init, "
        "input-independent baseline, overfitting one batch, backprop dependencies, ...). "
        "In Jupyter the run shows its verdict table, key figures and curves."
    ),
    code('base = runner.run("baseline", ["trainer.epochs=3"], quiet=True)\nbase'),
    code(
        "print(base.ok, base.exit_code, round(base.accuracy, 4))\n"
        'print(base.verdict("init.loss")["message"])\n'
        "base.metrics[-1]"
    ),
    md("The final model, built as the run built it, with its best weights, in eval mode:"),
    code(
        "import torch\n\n"
        "model = base.model()\n"
        "with torch.no_grad():\n"
        "    logits = model(torch.zeros(1, 1, 16, 16))\n"
        "logits.shape, model.training"
    ),
    md(
        "A config error raises `runner.ConfigError` before anything runs, with the message "
        "the command line prints:"
    ),
    code(
        "try:\n"
        '    runner.run("baseline", ["optim.lrr=0.1"])\n'
        "except runner.ConfigError as e:\n"
        "    print(e)"
    ),
    md(
        "## 3. A short recipe\n\n`stage=recipe` runs the stages in order, each starting from "
        "the previous one's outcome, and stops at a failed gate. Here only baseline and "
        'overfit, with a short overfit budget (the full recipe: `runner.run("recipe")`, '
        "about 2.5 minutes on 2 CPU cores)."
    ),
    code(
        "rec = runner.run(\n"
        '    "recipe",\n'
        '    ["stage.params.stages=[baseline,overfit]", '
        "'stage.params.per_stage.baseline=[\"trainer.epochs=3\"]',\n"
        "     'stage.params.per_stage.overfit=[\"trainer.epochs=10\"]'],\n"
        "    quiet=True,\n"
        ")\n"
        "rec"
    ),
    code(
        '[(s["stage"], s["val_acc"], s["exit_code"]) for s in rec.summary["stages"]], '
        'rec.summary["final"]["stage"]'
    ),
    md(
        "Any run directory can be read back later, from the command line's runs too; "
        "`rec.report()` shows the whole report.html inline."
    ),
    code("again = runner.load(rec.path)\nagain.accuracy == rec.accuracy"),
]
nb = nbformat.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}


def main(argv):
    import tempfile

    out = Path(argv[0]) if argv else Path(__file__).with_name("quickstart.ipynb")
    workdir = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="quickstart-"))
    workdir.mkdir(parents=True, exist_ok=True)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    nbformat.write(nb, out)
    print("wrote", out, "(runs in", workdir, ")")


if __name__ == "__main__":
    main(sys.argv[1:])
