"""Embedded models assembled from split packages: order, checksum, damaged cache, missing parts.

Fake distributions (a ``.dist-info`` folder plus data files on ``sys.path``) stand in for the
real part packages, so these tests need neither the 1.1 GB Qwen parts nor the Gemma ones.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import zipfile

import pytest

from fmtlab.errors import FmtlabError
from fmtlab.models import embedded as E


def _fake_dist(root, dist: str, relpath: str, payload: bytes) -> E.Part:
    pkg_dir = root / (dist.replace("-", "_") + "-1.0.dist-info")
    pkg_dir.mkdir(parents=True)
    (pkg_dir / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    data = root / relpath
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(payload)
    return E.Part(dist, relpath)


@pytest.fixture()
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def _model(parts, sha, container="gguf", member_dir=""):
    return E.EmbeddedModel(name="fake", title="fake model", kind="causal", container=container,
                           filename="fake.bin", parts=tuple(parts), sha256=sha,
                           install="pip install 'fmtlab[fake]'", member_dir=member_dir)


def test_parts_concatenate_in_order_and_verify(site, tmp_path):
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 7, b"c" * 5000]
    parts = [_fake_dist(site, f"fake-part-{i}", f"fake_part_{i}/data/p{i:02d}.bin", c) for i, c in enumerate(chunks)]
    whole = b"".join(chunks)
    model = _model(parts, hashlib.sha256(whole).hexdigest())
    path = E.assemble(model, str(tmp_path / "cache"))
    assert open(path, "rb").read() == whole
    assert sorted(os.listdir(os.path.dirname(path))) == ["fake.bin"]  # no temporary left
    assert E.assemble(model, str(tmp_path / "cache")) == path  # verified, reused


def test_wrong_checksum_is_refused_and_leaves_nothing(site, tmp_path):
    parts = [_fake_dist(site, "fake-part-0", "fake_part_0/data/p.bin", b"xyz")]
    model = _model(parts, "0" * 64)
    with pytest.raises(FmtlabError, match="SHA-256 .* expected 0{64}"):
        E.assemble(model, str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache" / "assembled" / "fake") == []


def test_damaged_cache_file_is_assembled_again(site, tmp_path):
    parts = [_fake_dist(site, "fake-part-0", "fake_part_0/data/p.bin", b"payload" * 100)]
    model = _model(parts, hashlib.sha256(b"payload" * 100).hexdigest())
    path = E.assemble(model, str(tmp_path / "cache"))
    with open(path, "r+b") as fh:
        fh.write(b"X")
    assert open(E.assemble(model, str(tmp_path / "cache")), "rb").read() == b"payload" * 100


def test_missing_part_names_the_install_command(site, tmp_path):
    parts = [_fake_dist(site, "fake-part-0", "fake_part_0/data/p.bin", b"abc"), E.Part("fake-part-absent", "x/y.bin")]
    model = _model(parts, hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(FmtlabError, match=r"needs fake-part-absent: pip install 'fmtlab\[fake\]'"):
        E.assemble(model, str(tmp_path / "cache"))


def test_part_file_missing_inside_an_installed_dist(site, tmp_path):
    part = _fake_dist(site, "fake-part-0", "fake_part_0/data/p.bin", b"abc")
    os.unlink(site / part.path)
    with pytest.raises(FmtlabError, match="installed, but fake_part_0/data/p.bin is absent"):
        E.assemble(_model([part], "0" * 64), str(tmp_path / "cache"))


def test_zip_checkpoint_is_extracted_once_without_escaping_members(site, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ckpt/config.json", "{}")
        zf.writestr("ckpt/sub/tokenizer.json", "{}")
        zf.writestr("ckpt/desktop.ini", "junk")
        zf.writestr("ckpt/../evil.txt", "escape")
        zf.writestr("other/x.txt", "not ours")
    blob = buf.getvalue()
    half = len(blob) // 2
    parts = [_fake_dist(site, "fz-0", "fz_0/in/a.zip.001", blob[:half]),
             _fake_dist(site, "fz-1", "fz_1/in/a.zip.002", blob[half:])]
    model = _model(parts, hashlib.sha256(blob).hexdigest(), container="zip", member_dir="ckpt")
    folder = E.checkpoint_dir(model, str(tmp_path / "cache"))
    files = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
    assert files == ["config.json", "fmtlab_assembled.json", "sub/tokenizer.json"]
    assert not (tmp_path / "cache" / "assembled" / "evil.txt").exists()
    assert E.checkpoint_dir(model, str(tmp_path / "cache")) == folder


def test_unknown_embedded_name_lists_the_known_ones():
    with pytest.raises(FmtlabError, match="known: gemma3, qwen2.5-coder-1.5b, mpnet"):
        E.get_embedded("llama-70b")


def test_load_model_without_the_extra_says_which_extra(monkeypatch, tmp_path):
    from fmtlab.models import loading

    absent = _model([E.Part("fmtlab-test-absent-part", "p/q.bin")], "0" * 64)
    monkeypatch.setitem(E.EMBEDDED, "gemma3", E.EmbeddedModel(**{**absent.__dict__, "name": "gemma3",
                                                                  "install": "pip install 'fmtlab[gemma3]'"}))
    monkeypatch.setattr(loading, "EMBEDDED", E.EMBEDDED)
    monkeypatch.setenv("FMTLAB_CACHE", str(tmp_path))
    with pytest.raises(FmtlabError, match=r"'gemma3' needs fmtlab-test-absent-part: pip install 'fmtlab\[gemma3\]'"):
        loading.load_model("gemma3")


@pytest.mark.parametrize("name", sorted(E.EMBEDDED))
def test_every_embedded_model_states_a_checksum_and_an_install_command(name):
    m = E.EMBEDDED[name]
    assert m.install.startswith("pip install")
    if not callable(m.sha256):
        assert len(m.expected_sha256()) == 64 and int(m.expected_sha256(), 16) >= 0
    assert m.kind in ("causal", "encoder") and m.container in ("gguf", "zip")
