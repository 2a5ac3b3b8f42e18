"""Report documents render to markdown and plain HTML; tables are written atomically."""

import csv
import json

from fmtlab.analysis.document import Document
from fmtlab.analysis.tables import markdown_table, write_csv, write_json


def test_markdown_table_formats_numbers():
    t = markdown_table([{"a": "x", "b": 0.000012345, "c": 12.3456789, "d": None}])
    assert t.splitlines()[0] == "| a | b | c | d |"
    assert "1.234e-05" in t and "12.35" in t and "n/a" in t


def test_document_markdown_and_html(tmp_path):
    d = Document("R")
    d.heading("Findings")
    d.bullets(["**best** is `int8`"])
    d.table([{"config": "a<b", "v": 1.5}])
    d.image("plots/x.png", "caption & more")
    md, html = d.write(tmp_path)
    text = md.read_text()
    assert "# R" in text and "| config | v |" in text and "![caption & more](plots/x.png)" in text
    h = html.read_text()
    assert "<strong>best</strong>" in h and "<code>int8</code>" in h
    assert "a&lt;b" in h and "src='plots/x.png'" in h and "<script" not in h


def test_csv_json_round_trip(tmp_path):
    rows = [{"a": 1, "b": float("nan"), "c": [1, 2]}, {"a": 2, "b": 0.5, "c": []}]
    p = write_csv(rows, tmp_path / "t.csv")
    got = list(csv.DictReader(p.open()))
    assert got[0]["a"] == "1" and got[0]["b"] == "" and json.loads(got[0]["c"]) == [1, 2]
    j = json.loads(write_json(rows, tmp_path / "t.json").read_text())
    assert j[0]["b"] is None and j[1]["b"] == 0.5
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
