"""The model-variant protocol (fmtlab.methods.variants): the registry keyed on config types, the
``+name(key=value)`` suffix parser and its spelling back, the fit cache, and a toy variant that
shows what a new variant implements."""

import dataclasses

import pytest

from fmtlab.errors import FmtlabError
from fmtlab.methods import variants as V
from fmtlab.methods.cushion_variant import CushionVariant
from fmtlab.methods.fptquant_variant import FPTQuantVariant



@pytest.fixture
def toy():
    """A toy variant ``+toy(scale=...)`` that multiplies a dict 'model''s weight; removed afterwards."""

    @dataclasses.dataclass(frozen=True)
    class ToyVariant(V.ModelVariant):
        name = "toy"
        scale: float = 2.0
        tag: str = "a"

    calls = []

    @V.register_variant_handler(ToyVariant)
    class ToyHandler(V.VariantHandler):
        def fit(self, variant, model, tokenizer, calib, log, progress=False):
            calls.append((variant, calib.key))
            return variant.scale * len(calib.texts), f"factor {variant.scale}"

        def apply(self, variant, state, model):
            return V.Applied(dict(model, w=model["w"] * state), text_info={"toy": variant.scale})

    yield ToyVariant, calls
    V._HANDLERS.pop(ToyVariant, None)
    V._BY_NAME.pop("toy", None)


def test_builtin_variants_registered():
    assert V.known_variants()[:2] == ("+cushion", "+fptquant")
    assert isinstance(V.handler_for(CushionVariant()), V.VariantHandler)
    assert V.variant_type("fptquant") is FPTQuantVariant


def test_spelling_round_trips(toy):
    ToyVariant, _ = toy
    for v in (ToyVariant(), ToyVariant(scale=0.5), ToyVariant(scale=3.0, tag="b"), CushionVariant(n_candidates=3),
              FPTQuantVariant(steps=7, lr=0.5)):
        cfg, back = V.parse_variant_config("w8a8_int_tensor_static" + str(v))
        assert back == v and type(back) is type(v)
        assert cfg.name == "w8a8_int_tensor_static" + str(v)
    assert str(ToyVariant()) == "+toy" and ToyVariant().slug == "toy"
    assert ToyVariant(scale=3.0).slug.startswith("toy-") and ToyVariant(scale=3.0).slug != ToyVariant(scale=4.0).slug


def test_parser_errors(toy):
    with pytest.raises(FmtlabError, match=r"known: \+cushion, \+fptquant, .*\+toy"):
        V.parse_variant_config("fp32+tyo")
    with pytest.raises(FmtlabError, match="options: scale, tag"):
        V.parse_variant_config("fp32+toy(size=2)")
    with pytest.raises(FmtlabError, match="not a valid float"):
        V.parse_variant_config("fp32+toy(scale=big)")
    with pytest.raises(FmtlabError, match="cannot be combined"):
        V.parse_variant_config("fp32+toy+cushion")
    with pytest.raises(FmtlabError, match="unknown model variant"):
        V.parse_variant("nope")


def test_a_composed_transform_is_not_a_variant():
    """A transform spec composes with '+': its last part must not be read as a variant suffix."""
    cfg, v = V.parse_variant_config("x:w=int8;a=int8;t=exclude_sink+smoothquant")
    assert v is None and cfg.transform == "exclude_sink+smoothquant"
    cfg, v = V.parse_variant_config("x:w=int8;a=int8;t=exclude_sink+smoothquant+cushion")
    assert v == CushionVariant() and cfg.transform == "exclude_sink+smoothquant"


def test_registration_checks_the_config_type():
    @dataclasses.dataclass
    class Mutable(V.ModelVariant):
        name = "mutable"

    with pytest.raises(FmtlabError, match="frozen"):
        V.register_variant_handler(Mutable)

    @dataclasses.dataclass(frozen=True)
    class Taken(V.ModelVariant):
        name = "cushion"

    with pytest.raises(FmtlabError, match="taken"):
        V.register_variant_handler(Taken)(type("H", (V.VariantHandler,), {"fit": None, "apply": None}))
    with pytest.raises(FmtlabError, match="not a ModelVariant"):
        V.register_variant_handler(dict)


def test_fit_cache_fits_once_per_model_and_calibration_data(toy):
    ToyVariant, calls = toy
    model = {"w": 3.0}
    calib = V.CalibData("test:calib", ("a", "b"))
    s = V.VariantSession(model, None, calib=calib)
    for _ in range(3):
        s.applied(ToyVariant())
    assert calls == [(ToyVariant(), "test:calib")]
    s.applied(ToyVariant(scale=3.0))
    assert len(calls) == 2
    other = V.VariantSession({"w": 1.0}, None, calib=calib, cache=s.cache)  # another model: its own fit
    other.fitted(ToyVariant())
    assert len(calls) == 3
    again = V.VariantSession(model, None, calib=calib, cache=s.cache)  # same model and data: cached
    again.fitted(ToyVariant())
    assert len(calls) == 3


def test_apply_leaves_the_callers_model_alone(toy):
    ToyVariant, _ = toy
    model = {"w": 3.0}
    ap = V.VariantSession(model, None, calib=V.CalibData("k", ("a", "b"))).applied(ToyVariant())
    assert ap.model == {"w": 12.0} and model == {"w": 3.0}
    assert ap.text_info == {"toy": 2.0}


def test_describe_names_fit_and_cost(toy):
    ToyVariant, _ = toy
    s = V.VariantSession({"w": 1.0}, None, calib=V.CalibData("k", ("a",)))
    s.fitted(ToyVariant(tag="b"))
    (row,) = s.descriptions()
    assert row["variant"] == "+toy(tag=b)" and row["fitted"] == "factor 2.0" and row["fit_seconds"] >= 0


def test_session_without_a_model_refuses():
    with pytest.raises(FmtlabError, match=r"\+cushion configs need the model"):
        V.VariantSession(None, None).fitted(CushionVariant())
