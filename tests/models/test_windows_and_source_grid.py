"""Windows framed as a request (BOS / CLS..SEP as the tokenizer adds them) and the GGUF source grid."""

from __future__ import annotations

import numpy as np
import pytest

from fmtlab.errors import FmtlabError
from fmtlab.models import source_grid as G
from fmtlab.sim.data import request_frame, token_windows, window_start_info


class _Tok:
    """Characters as ids; ``lead``/``tail`` are the special ids added with add_special_tokens."""

    def __init__(self, lead=(), tail=()):
        self.lead, self.tail = list(lead), list(tail)

    def __call__(self, text, add_special_tokens=True, verbose=False):
        ids = [ord(c) for c in text]
        return {"input_ids": (self.lead + ids + self.tail) if add_special_tokens else ids}

    def convert_ids_to_tokens(self, ids):
        return [f"<{i}>" for i in ids]


@pytest.mark.parametrize("lead,tail", [((), ()), ((2,), ()), ((101,), (102,))])
def test_request_frame_is_measured_from_the_tokenizer(lead, tail):
    assert request_frame(_Tok(lead, tail)) == (list(lead), list(tail))


def test_request_windows_carry_the_frame_and_count_it_in_seq_len():
    tok = _Tok(lead=(2,), tail=())
    wins, lead = token_windows(tok, ["abcdefghij"], seq_len=4, n_sequences=3)
    assert lead == 1
    assert wins == [[2, 97, 98, 99], [2, 100, 101, 102], [2, 103, 104, 105]]
    bare, lead0 = token_windows(tok, ["abcdefghij"], seq_len=4, n_sequences=2, start="text")
    assert lead0 == 0 and bare == [[97, 98, 99, 100], [101, 102, 103, 104]]


def test_encoder_frame_closes_each_window_and_prefix_follows_the_bos():
    wins, lead = token_windows(_Tok((101,), (102,)), ["abcdef"], seq_len=5, n_sequences=2, prefix="Z")
    assert lead == 2 and wins == [[101, 90, 97, 98, 102], [101, 90, 99, 100, 102]]


def test_no_frame_for_a_tokenizer_that_adds_none():
    wins, lead = token_windows(_Tok(), ["abcd"], seq_len=2)
    assert lead == 0 and wins == [[97, 98], [99, 100]]


def test_bad_window_start_and_no_room_are_refused():
    with pytest.raises(FmtlabError, match="window start"):
        token_windows(_Tok(), ["abcd"], seq_len=2, start="bos")
    with pytest.raises(FmtlabError, match="special tokens take 2 tokens"):
        token_windows(_Tok((1,), (2,)), ["abcd"], seq_len=2)


def test_window_start_info_names_the_tokens():
    info = window_start_info(_Tok((2,), ()))
    assert info == {"start": "request", "lead_ids": [2], "lead_tokens": ["<2>"], "tail_ids": [], "tail_tokens": []}
    assert window_start_info(_Tok((2,), ()), "text")["lead_ids"] == []


def test_gguf_types_map_to_module_names(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = str(tmp_path / "m.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 4), np.float16))
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((4, 4), np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.zeros(4, np.float32))
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    types = G.gguf_tensor_types(path)
    assert types == {"model.layers.0.self_attn.q_proj": "F16", "model.layers.0.mlp.down_proj": "F32",
                     "model.embed_tokens": "F16"}
    assert G.grid_summary(types) == {"q_proj": {"F16": 1}, "down_proj": {"F32": 1}, "embed_tokens": {"F16": 1}}


def test_unreadable_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(FmtlabError, match="cannot read the GGUF file"):
        G.gguf_tensor_types(str(bad))


def test_self_reproducing_share_compares_bits():
    w = np.array([[0.5, 1.0], [0.3, -0.0]], np.float32)
    share = G.self_reproducing_share(w, lambda x: np.round(x * 2) / 2)  # 0.3 -> 0.5; -0.0 -> -0.0
    assert share == 0.75
    assert G.self_reproducing_share(w, lambda x: x) == 1.0
    with pytest.raises(FmtlabError, match="empty"):
        G.self_reproducing_share(np.zeros((0, 2), np.float32), lambda x: x)
