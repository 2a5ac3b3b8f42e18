"""A report as a list of blocks, rendered to both markdown and self-contained plain HTML.

HTML output has inline CSS only, images referenced by relative path beside the file, no scripts,
so it opens from disk with no server.
"""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path
from typing import Mapping, Sequence

from fmtlab.analysis.tables import fmt_value, markdown_table
from fmtlab.safe_io import atomic_write_text

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;
margin:1em 0;font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #ddd}figcaption{font-size:0.85em;color:#555;margin-bottom:1.5em}
code{background:#f5f5f5;padding:0 3px}.tbl{overflow-x:auto;max-width:100%;margin:1em 0}
.tbl table{margin:0}pre{overflow-x:auto;white-space:pre-wrap;overflow-wrap:anywhere}
p,li,figcaption{overflow-wrap:anywhere}figure{margin:1em 0}"""
# Wide tables scroll inside their own box (.tbl) and long lines wrap, so the page never grows wider
# than the window (checked in headless Chromium at 1280 px by tests/analysis/test_report.py).


@dataclasses.dataclass
class Document:
    title: str
    blocks: list[tuple[str, object]] = dataclasses.field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(("bullets", list(items)))

    def table(self, rows: Sequence[Mapping], columns: Sequence[str] | None = None,
              headers: Mapping[str, str] | None = None, digits: int = 4) -> None:
        self.blocks.append(("table", (list(rows), columns, dict(headers or {}), digits)))

    def image(self, relpath: str, caption: str) -> None:
        self.blocks.append(("image", (relpath, caption)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    # ---- rendering ----------------------------------------------------------------------
    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, data in self.blocks:
            if kind == "heading":
                level, text = data
                out += ["#" * level + " " + text, ""]
            elif kind == "paragraph":
                out += [str(data), ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in data] + [""]
            elif kind == "table":
                rows, cols, headers, digits = data
                out += [markdown_table(rows, cols, headers, digits) if rows else "_(no rows)_", ""]
            elif kind == "image":
                rel, caption = data
                out += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
            elif kind == "code":
                out += ["```", str(data), "```", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
               f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>",
               f"<h1>{e(self.title)}</h1>"]
        for kind, data in self.blocks:
            if kind == "heading":
                level, text = data
                out.append(f"<h{level}>{e(text)}</h{level}>")
            elif kind == "paragraph":
                out.append(f"<p>{_inline(str(data))}</p>")
            elif kind == "bullets":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in data) + "</ul>")
            elif kind == "table":
                rows, cols, headers, digits = data
                if not rows:
                    out.append("<p><em>(no rows)</em></p>")
                    continue
                cols = cols or list(dict.fromkeys(k for r in rows for k in r))
                out.append("<div class='tbl'><table><thead><tr>" + "".join(f"<th>{e(headers.get(c, c))}</th>" for c in cols)
                           + "</tr></thead><tbody>")
                for r in rows:
                    out.append("<tr>" + "".join(f"<td>{e(fmt_value(r.get(c), digits))}</td>" for c in cols) + "</tr>")
                out.append("</tbody></table></div>")
            elif kind == "image":
                rel, caption = data
                out.append(f"<figure><img src='{e(rel)}' alt='{e(caption)}'><figcaption>{e(caption)}"
                           "</figcaption></figure>")
            elif kind == "code":
                out.append(f"<pre><code>{e(str(data))}</code></pre>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, folder: Path, stem: str = "report") -> tuple[Path, Path]:
        folder = Path(folder)
        md = atomic_write_text(folder / f"{stem}.md", self.to_markdown())
        ht = atomic_write_text(folder / f"{stem}.html", self.to_html())
        return md, ht


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold** spans."""
    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    return s
