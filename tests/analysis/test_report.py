"""`fmtlab report` end to end on a small slice of the embedded default (2 blocks, short text)."""

import csv
import json
import math
import re

import pytest

pytest.importorskip("transformers")

from fmtlab.analysis.report import ReportOptions, run_report  # noqa: E402
from fmtlab.analysis.studies import hw_operand  # noqa: E402
from fmtlab.cli import main  # noqa: E402
from fmtlab.errors import FmtlabError  # noqa: E402

CONFIGS = ("fp32", "w8a8_int_tensor", "w8a8_int_tensor_static", "w8a8_int_token", "w4a8_int_channel",
           "w4a8_dint_channel", "mxfp4")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    opts = ReportOptions(out=str(out), configs=CONFIGS, seq_lens=(32,), n_sequences=2,
                         layers=r"layers\.(0|1)\.", ppl_configs=("fp32", "w4a8_dint_channel"),
                         ppl_seq_len=32, ppl_sequences=2, progress=False)
    return out, run_report(opts)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_files_exist(report):
    out, summary = report
    for rel in ("report.md", "report.html", "tables/configs.csv", "tables/perplexity.csv",
                "tables/accumulation.csv", "tables/report.json", "tables/replay_seq32.csv",
                "plots/format_grids.png", "plots/heatmap_output_sqnr.png", "plots/heatmap_underflow.png",
                "plots/heatmap_clipping.png", "plots/outliers.png", "plots/tradeoff.png", "plots/accumulation.png",
                "tables/energy_per_token.csv", "plots/energy_pareto.png", "plots/energy_breakdown.png"):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    assert len(summary["findings"]) >= 3
    # energy per token (fmtlab.analysis.cost_section): every config at batch 1 and 64, of the trace's model
    energy = json.loads((out / "tables" / "report.json").read_text())["energy_per_token"]
    assert sorted({(r["config"], r["batch"]) for r in energy}) == sorted((c, b) for c in CONFIGS for b in (1, 64))
    assert all(r["energy_uj"] > 0 for r in energy)
    assert "Energy per token" in (out / "report.md").read_text()


def test_report_dir_is_published_whole_with_umask_modes(report):
    """Invariant: after a run the output folder holds no staging folder or lock file, and report
    files have the umask's mode like every other output (they were 0600 through mkstemp)."""
    import os

    out, _ = report
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    mode = 0o666 & ~_umask()
    for rel in ("report.md", "report.html", "tables/configs.csv", "tables/report.json", "plots/tradeoff.png",
                "tables/replay_seq32.csv"):
        assert (out / rel).stat().st_mode & 0o777 == mode, rel


def _umask() -> int:
    import os

    old = os.umask(0o022)
    os.umask(old)
    return old


def test_report_on_a_given_trace_states_its_sequence_count(report, tmp_path):
    """Invariant: `report --trace` describes the trace it read (2 sequences), not the default
    --sequences (4)."""
    out, _ = report
    opts = ReportOptions(out=str(tmp_path / "r"), configs=("fp32", "w8a8_int_token"), trace=str(out / "traces" / "seq32"),
                         perplexity=False, progress=False)
    assert opts.n_sequences == 4
    md = (tmp_path / "r" / "report.md").read_text() if run_report(opts) else ""
    assert "trace: 2 sequences of 32 tokens" in md and "4 sequences" not in md


def test_html_images_resolve(report):
    out, _ = report
    html = (out / "report.html").read_text()
    srcs = re.findall(r"<img src='([^']+)'", html)
    assert len(srcs) >= 6
    for s in srcs:
        assert (out / s).is_file(), s
    assert "<script" not in html


def test_tables_are_sane_and_cross_checked(report):
    out, _ = report
    rows = {r["config"]: r for r in _csv(out / "tables/configs.csv")}
    assert set(rows) == set(CONFIGS)
    assert rows["fp32"]["pooled_out_sqnr_db"] == "inf"  # no quantization, exact output
    for c in CONFIGS[1:]:
        s = float(rows[c]["pooled_out_sqnr_db"])
        assert 5 < s < 80, (c, s)
    # 8-bit activations/weights beat 4-bit weights on layer output error
    assert float(rows["w8a8_int_token"]["pooled_out_sqnr_db"]) > float(rows["w4a8_int_channel"]["pooled_out_sqnr_db"])
    # the area budget is the INT8 MAC: ratio 1 for W8A8, below 1 for the 4-bit-weight units
    assert float(rows["w8a8_int_token"]["area_vs_budget"]) == pytest.approx(1.0)
    assert float(rows["w4a8_dint_channel"]["area_vs_budget"]) < 1.0
    # replay rows: one per (recorded linear layer, config); 2 blocks x 7 Linear layers in SmolLM2
    replay = [r for r in _csv(out / "tables/replay_seq32.csv") if r["kind"] == "linear"]
    assert len(replay) == 2 * 7 * len(CONFIGS)
    for r in replay:
        assert 0.0 <= float(r["a_underflow_rate"]) <= 1.0
    ppl = {r["config"]: float(r["ppl"]) for r in _csv(out / "tables/perplexity.csv")}
    assert 1.0 < ppl["fp32"] < 1e4 and math.isfinite(ppl["w4a8_dint_channel"])
    acc = _csv(out / "tables/accumulation.csv")
    wide = [r for r in acc if r["accumulator"] == "int32"]
    assert wide and float(wide[0]["rel_error"]) == 0.0  # INT8 x INT8 into 32 bits is exact here
    doc = json.loads((out / "tables/report.json").read_text())
    assert doc["summary"]["configs"] == list(CONFIGS)


def test_protocol_is_stated_and_numbers_carry_intervals(report):
    """The report states the protocol, scores a trace of the eval texts with a calibration trace of
    the calib texts, shows static and dynamic per-tensor W8A8 separately, gives every headline
    number a bootstrap interval that contains it, and says whether each claimed difference's
    paired interval excludes zero."""
    out, summary = report
    md = (out / "report.md").read_text()
    assert "## Measurement protocol" in md and "per sequence" in md
    assert "static (absmax, calib)" in md and "dynamic, per sequence" in md
    man = {s: json.loads((out / "traces" / d / "manifest.json").read_text())["text"]["split"]
           for s, d in (("eval", "seq32"), ("calib", "calib_seq32"))}
    assert man == {"eval": "eval", "calib": "calib"}
    rows = {r["config"]: r for r in _csv(out / "tables/configs.csv")}
    for c in CONFIGS[1:]:
        v, lo, hi = (float(rows[c][k]) for k in ("pooled_out_sqnr_db", "pooled_out_sqnr_lo", "pooled_out_sqnr_hi"))
        assert lo <= v <= hi, c
        u, ulo, uhi = (float(rows[c][k]) for k in ("a_underflow_rate", "a_underflow_lo", "a_underflow_hi"))
        assert ulo <= u <= uhi, c
    ppl = {r["config"]: r for r in _csv(out / "tables/perplexity.csv")}
    assert float(ppl["fp32"]["ppl_lo"]) <= float(ppl["fp32"]["ppl"]) <= float(ppl["fp32"]["ppl_hi"])
    claims = [f for f in summary["findings"] if "paired bootstrap" in f]
    assert any("dINT4 minus INT4" in f for f in claims) and any("static minus dynamic" in f for f in claims)
    assert all(("excludes zero" in f) or ("includes zero" in f) for f in claims)


def test_reuses_the_trace(report, capsys):
    out, _ = report
    code = main(["report", "--out", str(out), "--configs", "fp32,w8a8_int_token", "--seq-lens", "32",
                 "--sequences", "2", "--layers", r"layers\.(0|1)\.", "--no-perplexity"])
    assert code == 0
    err = capsys.readouterr().err
    assert "reusing trace" in err and "recording" not in err


def test_hw_operand_mapping():
    assert hw_operand("int8_per_token") == ("int8", "element MAC")
    assert hw_operand("mxfp8_e4m3")[0] == "mxfp8_e4m3"
    assert hw_operand("nvfp4")[0] == "mxfp4_e2m1_b16"
    assert hw_operand(None)[0] is None


def test_bad_options_are_clear(tmp_path, capsys):
    with pytest.raises(FmtlabError, match="sequence lengths"):
        ReportOptions(seq_lens=(1,))
    assert main(["report", "--out", str(tmp_path), "--configs", "nonsense_config", "--no-perplexity"]) == 2
    assert "unknown config" in capsys.readouterr().err


def test_layer_labels_are_unique_per_tensor():
    from fmtlab.analysis.report_text import layer_label as _layer_label

    rows = [{"block": 0, "op": "linear", "layer_type": t, "tensor": f"model.layers.0.{t}"}
            for t in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj")]
    assert [_layer_label(r) for r in rows] == ["b0.q_proj", "b0.k_proj", "b0.down_proj"]


_BROWSER_CHECK = """<script>
window.addEventListener('load', function () {
  var vw = document.documentElement.clientWidth;
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}; });
  var tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
    var box = t.parentElement, cs = getComputedStyle(box);
    return {right: t.getBoundingClientRect().right, width: t.scrollWidth,
            scrolls: cs.overflowX === 'auto' || cs.overflowX === 'scroll',
            box_right: box.getBoundingClientRect().right}; });
  document.body.setAttribute('data-fmtlab-check', JSON.stringify(
    {vw: vw, page_width: document.documentElement.scrollWidth, imgs: imgs, tables: tables}));
});
</script>"""


def _chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def test_report_html_in_a_real_browser(report, tmp_path):
    """report.html rendered by headless Chromium at 1280 px: every image loads, the page is no
    wider than the window (a wide table scrolls inside its own box instead of pushing the page),
    and a screenshot is written. Skips where Chromium is missing (.ci/run installs Debian's)."""
    import shutil
    import subprocess

    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    out, _ = report
    shutil.copytree(out / "plots", tmp_path / "plots")
    html = (out / "report.html").read_text()
    page = tmp_path / "check.html"
    page.write_text(html.replace("</body>", _BROWSER_CHECK + "</body>"))
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--window-size=1280,2000", "--virtual-time-budget=10000", "--hide-scrollbars"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    m = re.search(r"data-fmtlab-check=\"([^\"]*)\"", dom)
    assert m, f"the check script did not run; chromium printed {dom[:300]!r}"
    import html as html_mod

    check = json.loads(html_mod.unescape(m.group(1)))
    assert check["imgs"] and all(i["ok"] for i in check["imgs"]), [i for i in check["imgs"] if not i["ok"]]
    assert len(check["imgs"]) == len(re.findall(r"<img ", html))
    assert check["page_width"] <= check["vw"] <= 1280, check["page_width"]
    for t in check["tables"]:
        assert t["right"] <= check["vw"] + 1 or (t["scrolls"] and t["box_right"] <= check["vw"] + 1), t
    shot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", (out / "report.html").as_uri()], capture_output=True,
                   timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_perplexity_seq_len_beyond_context_is_refused_before_work(tmp_path):
    """--ppl-seq-len (and --seq-lens) longer than the model's context fail at once with a clear
    error, before anything is recorded (SmolLM2-135M: 8192 positions)."""
    opts = ReportOptions(out=str(tmp_path / "r"), configs=("fp32",), seq_lens=(16,), n_sequences=1,
                         layers=r"layers\.0\.", ppl_configs=("fp32",), ppl_seq_len=100_000,
                         ppl_sequences=2, progress=False)
    with pytest.raises(FmtlabError, match="context length"):
        run_report(opts)
    assert not (tmp_path / "r" / "traces").exists()


def test_weight_grid_caveat_follows_the_model_stored_grid():
    """The understated-4-bit-weights remark names the stored GGUF grid, and is absent for a
    full-precision checkpoint (it used to name SmolLM2's Q4_1 in every model's report)."""
    from types import SimpleNamespace

    from fmtlab.analysis.report_text import headline_findings

    rows = [{"config": c, "area_ge": 100.0, "area_um2": 10.0, "energy_pj": 0.1, "pooled_out_sqnr_db": s,
             "w_underflow_rate": u, "transform": None}
            for c, s, u in (("w4a8_int_channel", 20.0, 0.2), ("w4a8_dint_channel", 21.0, 0.1))]
    budget = SimpleNamespace(area_ge_per_mac=1000.0, area_um2_per_mac=100.0)
    gguf = [f for f in headline_findings(rows, [], budget, "int8 x int8", [], stored_grid="Q4_1") if "dINT4" in f]
    full = [f for f in headline_findings(rows, [], budget, "int8 x int8", []) if "dINT4" in f]
    assert len(gguf) == 1 and "stored as Q4_1" in gguf[0] and "understated" in gguf[0]
    assert len(full) == 1 and "Q4_1" not in full[0] and "understated" not in full[0] and "SmolLM2" not in full[0]
