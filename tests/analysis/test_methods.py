"""The "Methods from the papers" section (fmtlab.analysis.methods.section) with a fake claim,
claim selection, and the `fmtlab methods` / `fmtlab report --methods` command lines."""

import json

import pytest

from fmtlab.analysis import methods as M
from fmtlab.analysis.document import Document
from fmtlab.analysis.methods.section import add_section, make_context, parse_methods, run_claims, write_methods
from fmtlab.cli import main
from fmtlab.errors import FmtlabError


@pytest.fixture()
def fake(monkeypatch):
    """A registered claim ``fake`` whose experiment returns fixed numbers (removed afterwards)."""
    M.list_claims()  # import the real method modules first, so they register in the real registry
    monkeypatch.setattr(M, "_CLAIMS", dict(M._CLAIMS))

    @M.register_claim("fake", "FakeMethod", "Doe et al. 2099, A Paper", "Fake makes things better.")
    def run(ctx):
        return M.ClaimResult("fake", f"gain 1.23 [0.50, 2.00] on {ctx.n_eval} windows", M.Verdict.NOT_REPRODUCED,
                             "the interval includes the paper's bar", {"gain": 1.23}, 0.0)

    return run


def test_section_renders_a_claim_table(fake):
    """Invariant: every field of the claim and its result appears in the rendered section,
    with the run time measured by run_claims."""
    ctx = make_context(None, None, seq_len=8, n_calib=2, n_eval=3, calib_texts=["a"], eval_texts=["b"])
    results = run_claims(["fake"], ctx)
    doc = Document("t")
    add_section(doc, results, ctx)
    md = doc.to_markdown()
    for s in ("Methods from the papers", "FakeMethod", "Doe et al. 2099, A Paper", "Fake makes things better.",
              "gain 1.23 [0.50, 2.00] on 3 windows", "not reproduced", "the interval includes the paper's bar",
              "run time"):
        assert s in md, s
    assert "<table" in doc.to_html() or "<td" in doc.to_html()


def test_write_methods_files(fake, tmp_path):
    ctx = make_context(None, None, seq_len=8, n_calib=2, n_eval=2, calib_texts=["a"], eval_texts=["b"])
    md, html, js = write_methods(run_claims(["fake"], ctx), ctx, tmp_path / "m", "title")
    data = json.loads(js.read_text())
    assert data["claims"][0]["verdict"] == "not reproduced" and data["claims"][0]["numbers"] == {"gain": 1.23}
    assert md.read_text().startswith("# title") and html.exists()


def test_run_for_report_uses_the_report_windows(fake):
    """`fmtlab report --methods` runs the claims on the perplexity windows (>= 2 of each)."""
    from types import SimpleNamespace

    from fmtlab.analysis.methods.section import run_for_report

    steps = []
    opts = SimpleNamespace(methods=("fake",), ppl_seq_len=16, n_sequences=1, ppl_sequences=5, progress=False)
    (claim, res), = run_for_report(opts, None, None, steps.append)
    assert claim.key == "fake" and res.measured.endswith("on 5 windows") and steps == ["method claims: fake"]


def test_parse_methods(fake):
    assert parse_methods("none") == () and parse_methods(None) == () and parse_methods("") == ()
    assert {"cushion", "massive", "fake"} <= set(parse_methods("all"))
    assert parse_methods("fake, cushion,fake") == ("fake", "cushion")
    with pytest.raises(FmtlabError, match="unknown method claim"):
        parse_methods("cushion,nope")


def test_make_context_needs_two_sequences():
    with pytest.raises(FmtlabError):
        make_context(None, None, n_eval=1, calib_texts=["a"], eval_texts=["b"])


def test_cli_lists_claims_and_rejects_unknown(capsys):
    assert main(["methods", "--list"]) == 0
    out = capsys.readouterr().out
    assert "cushion: CushionCache" in out and "massive:" in out
    assert main(["methods", "--claims", "nope"]) == 2
    assert main(["report", "--methods", "nope", "--no-perplexity"]) == 2
    assert "unknown method claim" in capsys.readouterr().err
