"""`fmtlab vectors`: the files read back and held to the oracle, ml_dtypes and torch, and an
independent restatement of the OCP MX / NVFP4 block rules."""

from __future__ import annotations

import csv
import json
import math

import ml_dtypes
import numpy as np
import pytest

from fmtlab.cli import main
from fmtlab.formats import get_format, get_quantizer
from fmtlab.formats.oracle import oracle_encode
from fmtlab.formats.vectors import f32_from_bits, f64_from_bits, read_hex, vector_set

F32 = np.float32


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Vectors of fp8_e4m3, mxfp4 and nvfp4 written once through the CLI."""
    out = tmp_path_factory.mktemp("vectors")
    for name in ("fp8_e4m3", "mxfp4", "nvfp4"):
        assert main(["vectors", name, "--out", str(out), "--n", "400", "--seed", "3"]) == 0
    return out


def _inputs(rows):
    return np.array([f32_from_bits(int(r["input_f32_bits"], 16)) for r in rows], dtype=F32)


def _check_element_files(out, name, fmt, ml_type=None):
    dec = _csv(out / f"{name}.decode.csv")
    assert len(dec) == 1 << fmt.bits
    vals = fmt.values()
    got = np.array([f64_from_bits(int(r["value_f64_bits"], 16)) for r in dec])
    np.testing.assert_array_equal(got.view(np.uint64)[~np.isnan(got)],
                                  vals.view(np.uint64)[~np.isnan(vals)])
    assert np.array_equal(np.isnan(got), np.isnan(vals))
    words = read_hex(out / f"{name}.decode.hex")
    assert [w >> 64 for w in words] == list(range(1 << fmt.bits))
    assert [w & ((1 << 64) - 1) for w in words] == [int(r["value_f64_bits"], 16) for r in dec]
    if ml_type is not None:
        ml = np.arange(1 << fmt.bits, dtype=np.uint8).view(ml_type).astype(np.float64)
        assert np.array_equal(np.isnan(ml), np.isnan(got))
        np.testing.assert_array_equal(ml[~np.isnan(ml)].view(np.uint64), got[~np.isnan(got)].view(np.uint64))

    enc = _csv(out / f"{name}.encode.csv")
    x = _inputs(enc)
    codes = np.array([int(r["code"], 16) for r in enc])
    np.testing.assert_array_equal(codes, oracle_encode(fmt, x, "nearest_even").astype(np.int64))
    ewords = read_hex(out / f"{name}.encode.hex")
    cw = 4 * ((fmt.bits + 3) // 4)
    assert [w >> cw for w in ewords] == [int(r["input_f32_bits"], 16) for r in enc]
    assert [w & ((1 << cw) - 1) for w in ewords] == codes.tolist()
    kinds = {r["kind"].rstrip("~") for r in enc}
    for k in ("value", "midpoint", "midpoint+ulp", "midpoint-ulp", "overflow_threshold",
              "overflow_threshold+ulp", "underflow_threshold", "signed_zero", "inf",
              "f32_subnormal", "random"):
        assert k in kinds, k
    if ml_type is not None:
        ml = x.astype(ml_type).view(np.uint8).astype(np.int64)
        np.testing.assert_array_equal(ml, codes)
    doc = json.loads((out / f"{name}.json").read_text())
    assert len(doc["encode"]) == len(enc) and len(doc["decode"]) == len(dec)
    assert doc["conventions"]["rounding"] == "nearest_even"
    return x, codes


def test_fp8_e4m3_vectors_match_oracle_ml_dtypes_and_torch(written):
    torch = pytest.importorskip("torch")
    fmt = get_format("fp8_e4m3")
    x, codes = _check_element_files(written, "fp8_e4m3", fmt, ml_dtypes.float8_e4m3fn)
    assert {"nan"} <= {r["kind"] for r in _csv(written / "fp8_e4m3.encode.csv")}
    text = "\n".join(ln for ln in (written / "fp8_e4m3.encode.hex").read_text().splitlines()
                     if ln.startswith("//"))
    for word in ("rounding: nearest_even", "overflow: nan", "-0.0 -> 0x80", "+NaN -> 0x7F",
                 "word layout"):
        assert word in text, word
    # torch's cast saturates out of range: compare where no overflow happens
    thr = (448 + 480) / 2
    ok = np.isfinite(x) & (np.abs(x.astype(np.float64)) < thr)
    t = torch.from_numpy(x[ok]).to(torch.float8_e4m3fn).view(torch.uint8).numpy().astype(np.int64)
    np.testing.assert_array_equal(t, codes[ok])


def test_p3109_vectors_match_oracle_and_gfloat(tmp_path):
    """binary8p3se (IEEE P3109, K=8 P=3 signed extended): files vs the oracle and gfloat."""
    fmt = get_format("binary8p3se")
    assert main(["vectors", "binary8p3se", "--out", str(tmp_path), "--n", "300"]) == 0
    x, codes = _check_element_files(tmp_path, "binary8p3se", fmt)
    g = pytest.importorskip("gfloat", reason="gfloat (the P3109 peer) is not installed")
    from gfloat.formats import format_info_p3109
    from gfloat.types import Domain, RoundMode, Signedness

    fi = format_info_p3109(8, 3, Signedness.Signed, Domain.Extended)
    dec = _csv(tmp_path / "binary8p3se.decode.csv")
    for r in dec:
        want = g.decode_float(fi, int(r["code"])).fval
        got = f64_from_bits(int(r["value_f64_bits"], 16))
        assert (math.isnan(want) and math.isnan(got)) or (want == got and
                                                         math.copysign(1, want) == math.copysign(1, got))
    vals = fmt.values()[codes]
    for xi, v in zip(x.tolist(), vals.tolist()):
        w = g.round_float(fi, xi, RoundMode.TiesToEven, False)
        assert (math.isnan(w) and math.isnan(v)) or w == v, (xi, v, w)


def _blocks(out, name):
    rows = _csv(out / f"{name}.blocks.csv")
    x = np.array([[f32_from_bits(int(h, 16)) for h in r["inputs_f32_bits"].split()] for r in rows], F32)
    sc = np.array([int(r["scale_code"], 16) for r in rows])
    codes = np.array([[int(c, 16) for c in r["codes"].split()] for r in rows])
    return rows, x, sc, codes


def _check_block_hex(out, name, x, sc, codes, cw):
    K = x.shape[1]
    words = read_hex(out / f"{name}.blocks.hex")
    assert len(words) == x.shape[0]
    for w, xi, si, ci in zip(words, x, sc, codes):
        cs = [(w >> (cw * (K - 1 - j))) & ((1 << cw) - 1) for j in range(K)]
        assert cs == ci.tolist()
        w >>= cw * K
        assert w & 0xFF == si
        w >>= 8
        xs = [(w >> (32 * (K - 1 - j))) & 0xFFFFFFFF for j in range(K)]
        assert xs == xi.view(np.uint32).tolist()


def _boundary_pairs(rows, x, sc):
    """Every (below, above) pair: adjacent float32 block maxima with different scale codes."""
    n = 0
    for i, r in enumerate(rows):
        if r["kind"] == "scale_boundary_below":
            assert rows[i + 1]["kind"] == "scale_boundary_above"
            a, b = np.abs(x[i]).max(), np.abs(x[i + 1]).max()
            assert np.nextafter(a, F32(np.inf)) == b and sc[i] < sc[i + 1]
            n += 1
    return n


def test_mxfp4_blocks_match_the_ocp_mx_rule(written):
    fmt = get_format("fp4_e2m1")
    _check_element_files(written, "mxfp4", fmt, ml_dtypes.float4_e2m1fn)
    rows, x, sc, codes = _blocks(written, "mxfp4")
    _check_block_hex(written, "mxfp4", x, sc, codes, 4)
    assert _boundary_pairs(rows, x, sc) >= 250  # every E8M0 code step reachable in float32
    # OCP MX v1.0 section 6.3, restated: X = 2**(floor(log2 amax) - emax_elem), emax_elem = 2
    for xi, si, ci in zip(x, sc, codes):
        if not np.all(np.isfinite(xi)):
            assert si == 0xFF and not ci.any()
            continue
        amax = float(np.abs(xi).max())
        e = -127 if amax == 0 else max(-127, min(127, math.floor(math.log2(amax)) - 2))
        assert si == e + 127
        y = (xi.astype(np.float64) / 2.0 ** e).astype(F32)
        np.testing.assert_array_equal(ci, oracle_encode(fmt, y, "nearest_even", "saturate"))
    assert {"zero", "nan", "inf", "random", "f32_subnormal"} <= {r["kind"] for r in rows}


def test_nvfp4_blocks_match_the_two_level_rule(written):
    fmt, e4m3 = get_format("fp4_e2m1"), get_format("fp8_e4m3")
    rows, x, sc, codes = _blocks(written, "nvfp4")
    _check_block_hex(written, "nvfp4", x, sc, codes, 4)
    assert rows[0]["kind"] == "anchor"
    doc = json.loads((written / "nvfp4.json").read_text())
    g = float.fromhex(doc["conventions"]["tensor_scale"])
    assert g == 1.0  # the anchor block's max is 448 * 6
    assert _boundary_pairs(rows, x, sc) >= 120
    for xi, si, ci in zip(x, sc, codes):
        if not np.all(np.isfinite(xi)):
            assert si == e4m3.canonical_nan_code() and not ci.any()
            continue
        amax = F32(np.abs(xi).max())
        s_rel = F32(F32(amax / F32(6.0)) / F32(g))
        want = max(1, int(oracle_encode(e4m3, np.array([s_rel]), "nearest_even", "saturate")[0]))
        assert si == want
        S = F32(F32(g) * F32(e4m3.values()[si]))
        y = (xi / S).astype(F32)
        np.testing.assert_array_equal(ci, oracle_encode(fmt, y, "nearest_even", "saturate"))


def test_stochastic_vectors_carry_their_draws(tmp_path):
    fmt = get_format("fp4_e2m1")
    assert main(["vectors", "fp4_e2m1", "--out", str(tmp_path), "--rounding", "stochastic",
                 "--n", "200", "--seed", "5"]) == 0
    enc = _csv(tmp_path / "fp4_e2m1.encode.csv")
    x = _inputs(enc)
    u = np.array([float.fromhex(r["draw"]) for r in enc])
    codes = np.array([int(r["code"], 16) for r in enc])
    np.testing.assert_array_equal(codes, oracle_encode(fmt, x, "stochastic", rand=u))
    w = read_hex(tmp_path / "fp4_e2m1.encode.hex")
    assert [(v >> 4) & ((1 << 64) - 1) for v in w] == [int(np.float64(d).view(np.uint64)) for d in u]


def test_vector_set_is_deterministic():
    a = vector_set("fp6_e2m3", seed=7, n=100).elements
    b = vector_set("fp6_e2m3", seed=7, n=100).elements
    np.testing.assert_array_equal(a.inputs.view(np.uint32), b.inputs.view(np.uint32))
    c = vector_set("fp6_e2m3", seed=8, n=100).elements
    assert not np.array_equal(a.inputs.view(np.uint32), c.inputs.view(np.uint32))


@pytest.mark.parametrize("args, needle", [
    (["vectors", "nosuchformat"], "neither a format"),
    (["vectors", "fp8_e4m3", "--seed", "-1"], "seed"),
    (["vectors", "fp8_e4m3", "--rounding", "up"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) if "--rounding" in args else _null():
        rc = main(args + ["--out", str(out)])
        assert rc == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(p.name.endswith((".csv", ".hex", ".json")) for p in out.iterdir())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_scale_rule_override_four_over_six(tmp_path):
    """nvfp4 under Four Over Six: own file names, header names the rule, pairs still bracket a
    scale-code change between adjacent float32 block maxima."""
    assert main(["vectors", "nvfp4", "--out", str(tmp_path), "--n", "64",
                 "--scale-rule", "four_over_six"]) == 0
    rows, x, sc, codes = _blocks(tmp_path, "nvfp4_four_over_six")
    assert _boundary_pairs_any(rows, x, sc) > 50
    head = (tmp_path / "nvfp4_four_over_six.blocks.hex").read_text()
    assert "scale_rule: four_over_six" in head
    assert main(["vectors", "fp8_e4m3", "--out", str(tmp_path), "--scale-rule", "ceil"]) == 2


def _boundary_pairs_any(rows, x, sc):
    n = 0
    for i, r in enumerate(rows):
        if r["kind"] == "scale_boundary_below":
            a, b = np.abs(x[i]).max(), np.abs(x[i + 1]).max()
            assert np.nextafter(a, F32(np.inf)) == b and sc[i] != sc[i + 1]
            n += 1
    return n


def test_tile_vectors_are_tiles(tmp_path):
    """``fmtlab vectors nvfp4_16x16``: each block row is one 16 x 16 tile; laid side by side as a
    [16, 16 * n] matrix they quantize under the tile quantizer to the file's codes."""
    assert main(["vectors", "nvfp4_16x16", "--out", str(tmp_path), "--n", "16"]) == 0
    rows, x, sc, codes = _blocks(tmp_path, "nvfp4_16x16")
    assert x.shape[1] == 256
    assert "tile: 16x16" in (tmp_path / "nvfp4_16x16.blocks.hex").read_text()
    m = x.reshape(-1, 16, 16).transpose(1, 0, 2).reshape(16, -1)  # tile k -> columns 16k..16k+15
    qt = get_quantizer("nvfp4_16x16").quantize(m)
    assert qt.scale_codes.shape == (1, len(rows))
    np.testing.assert_array_equal(qt.scale_codes.reshape(-1), sc)
    got = qt.codes.reshape(16, -1, 16).transpose(1, 0, 2).reshape(-1, 256)
    np.testing.assert_array_equal(got, codes)
