"""Tables: rows (lists of dicts) to markdown, CSV and JSON, written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fmtlab.safe_io import atomic_write_text


def _columns(rows: Sequence[Mapping], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r.keys()))
    return list(cols)


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except (ValueError, TypeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def write_csv(rows: Iterable[Mapping], path: Path, columns: Sequence[str] | None = None) -> Path:
    rows = list(rows)
    cols = _columns(rows, columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(_plain(v)) if isinstance(v, (list, dict, tuple)) else _plain(v))
                    for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


def write_json(obj: Any, path: Path) -> Path:
    return atomic_write_text(path, json.dumps(_plain(obj), indent=2, sort_keys=False) + "\n")


def fmt_value(v: Any, digits: int = 4) -> str:
    v = _plain(v)
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
                   headers: Mapping[str, str] | None = None, digits: int = 4) -> str:
    """A GitHub-flavoured markdown table; ``headers`` renames columns for display."""
    rows = list(rows)
    cols = _columns(rows, columns)
    headers = dict(headers or {})
    head = "| " + " | ".join(headers.get(c, c) for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(fmt_value(r.get(c), digits).replace("|", "\\|") for c in cols) + " |"
            for r in rows]
    return "\n".join([head, sep, *body])
