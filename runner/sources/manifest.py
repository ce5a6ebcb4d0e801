"""data=manifest: images named by one or more labels files (CSV, TSV, JSON, JSON lines) of
`path,label[,split][,group]` rows; paths relative to the file that names them.

    path,label,split,patient
    img/0001.png,cat,train,p17
    img/0002.png,dog,val,p03
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from runner.errors import ConfigError
from runner.sources import CARVE, SPLIT_NAMES, Records, label_index, relative_name

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".ndjson")
# the columns' defaults (runner.config DataConfig): a default column that a file lacks is
# simply absent; one the user named must be there
DEFAULT_COLUMNS = {"split_column": "split", "group_column": "group"}
SHOWN = 5


def _rows(path: Path) -> Tuple[List[Dict[str, Any]], List[str], str]:
    """(rows, columns, what a row number means) of one labels file."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                rows = list(reader)
                return rows, list(reader.fieldnames or []), "line"
        text = path.read_text(encoding="utf-8")
        if suffix in (".jsonl", ".ndjson"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            if isinstance(data, dict):
                lists = [v for v in data.values() if isinstance(v, list)]
                data = lists[0] if len(lists) == 1 else data
            rows = data
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise ConfigError(f"data.files: {path} cannot be read as {suffix[1:]}: {e}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(
            f"data.files: {path} holds no list of objects; expected "
            '[{"path": ..., "label": ...}, ...] (or one such list under a key)'
        )
    columns = sorted({k for r in rows for k in r})
    return rows, columns, "item"


def _where(path: Path, k: int, unit: str) -> str:
    # a CSV's header is line 1, its first row line 2; JSON items count from 0
    return f"{path} {unit} {k + 2 if unit == 'line' else k}"


def records(cfg, base: Path) -> Records:
    files = cfg.files
    files = [files] if isinstance(files, (str, Path)) else list(files or [])
    if not files:
        raise ConfigError("data.files is not set; expected a CSV or JSON file of path,label rows")
    col = {k: str(cfg.get(k)) for k in ("path_column", "label_column", *DEFAULT_COLUMNS)}
    problems: List[str] = []
    paths: List[Path] = []
    labels: List[str] = []
    splits: List[int] = []
    groups: List[str] = []
    names: List[str] = []
    wheres: List[str] = []
    has_group = False
    seen: Dict[Path, str] = {}
    missing: List[str] = []
    bad_split: List[str] = []
    common = Path(base)
    loaded = []
    for f in files:
        path = (base / str(f)).expanduser()
        if not path.is_file():
            problems.append(f"data.files: {path} is not a file; expected a CSV or JSON labels file")
            continue
        if path.suffix.lower() not in SUFFIXES:
            problems.append(f"data.files: {path} is not {', '.join(SUFFIXES)}")
            continue
        rows, columns, unit = _rows(path)
        if not rows:
            problems.append(f"data.files: {path} has no rows")
            continue
        for key in ("path_column", "label_column"):
            if col[key] not in columns:
                problems.append(
                    f"data.{key}={col[key]!r}: {path} has no such column; its columns: {columns}"
                )
        for key, default in DEFAULT_COLUMNS.items():
            if col[key] != default and col[key] not in columns:
                problems.append(
                    f"data.{key}={col[key]!r}: {path} has no such column; its columns: {columns}"
                )
        has_group |= col["group_column"] in columns
        loaded.append((path, rows, columns, unit))
    if problems:
        raise ConfigError(problems)
    if len(loaded) == 1:
        common = loaded[0][0].parent
    for path, rows, columns, unit in loaded:
        folder = path.parent
        for k, row in enumerate(rows):
            where = _where(path, k, unit)
            img = (folder / str(row.get(col["path_column"]) or "")).expanduser()
            if not str(row.get(col["path_column"]) or "").strip() or not img.is_file():
                missing.append(f"{where}: {img}")
                continue
            key = img.resolve()
            if key in seen:
                problems.append(f"{where}: {img} is also listed at {seen[key]}")
                continue
            seen[key] = where
            s = CARVE
            if col["split_column"] in columns:
                value = str(row.get(col["split_column"]) or "").strip().lower()
                if value and value not in SPLIT_NAMES:  # empty: carved by the fractions
                    bad_split.append(f"{where}: {value!r}")
                    continue
                s = SPLIT_NAMES.get(value, CARVE)
            paths.append(img)
            labels.append(row.get(col["label_column"], ""))
            splits.append(s)
            g = row.get(col["group_column"]) if has_group else None
            groups.append(str(g).strip() if g not in (None, "") else f"row:{where}")
            names.append(relative_name(img, common))
            wheres.append(where)
    if missing:
        problems.append(
            f"{len(missing)} image(s) named in data.files do not exist, e.g. "
            + "; ".join(missing[:SHOWN])
        )
    if bad_split:
        problems.append(
            f"data.split_column={col['split_column']!r}: {len(bad_split)} row(s) with a "
            f"split other than train/val/test, e.g. " + "; ".join(bad_split[:SHOWN])
        )
    if problems:
        raise ConfigError(problems[: 2 * SHOWN])
    idx, class_names = label_index(labels, lambda k: wheres[k])
    return Records(
        "manifest",
        class_names,
        idx,
        np.array(splits, np.int8),
        names,
        [str(p) for p in paths],
        group=np.array(groups, dtype=object) if has_group else None,
        source=f"data.files={[str(f) for f in files]}",
        root=str(common.resolve()),
    )
