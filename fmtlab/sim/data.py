"""Offline text for calibration and evaluation.

Two sources ship inside the ``gensim`` wheel (no download):

* ``"wiki"``: the shortened 2016 English Wikipedia dump
  ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`` (about 100 articles after
  redirects and stubs are dropped); wiki markup is stripped with ``gensim.corpora.wikicorpus.filter_wiki``
  and a few extra rules (bold/italic quotes, heading ``==`` marks, blank-line runs).
* ``"lee"``: ``lee_background.cor``, 300 Australian news documents, one per line.

Splits are fixed and disjoint: ``"calib"`` takes the first half of each source (in file order),
``"eval"`` the second half. The same call always returns the same texts.
"""

from __future__ import annotations

import bz2
import functools
import os
import re
from typing import Sequence

from fmtlab.errors import FmtlabError

SOURCES = ("wiki", "lee")
SPLITS = ("calib", "eval")
_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_LEE_FILE = "lee_background.cor"
_MIN_ARTICLE_CHARS = 500


def _gensim_test_data() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FmtlabError("the default texts need the 'gensim' package (pip install gensim)")
    return os.path.join(list(spec.submodule_search_locations)[0], "test", "test_data")


def _clean_wiki(text: str) -> str:
    text = re.sub(r"'{2,}", "", text)  # ''italic'' and '''bold'''
    text = re.sub(r"^\s*=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.M)  # == Heading ==
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


@functools.lru_cache(maxsize=1)
def _wiki_articles() -> tuple[str, ...]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = os.path.join(_gensim_test_data(), _WIKI_FILE)
    if not os.path.exists(path):
        raise FmtlabError(f"gensim's Wikipedia test dump is missing: {path}")
    out = []
    with bz2.BZ2File(path) as fh:
        for title, markup, _pageid in extract_pages(fh, filter_namespaces=("0",)):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            body = _clean_wiki(filter_wiki(markup))
            if len(body) >= _MIN_ARTICLE_CHARS:
                out.append(f"{title}\n\n{body}")
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _lee_documents() -> tuple[str, ...]:
    path = os.path.join(_gensim_test_data(), _LEE_FILE)
    if not os.path.exists(path):
        raise FmtlabError(f"gensim's Lee corpus is missing: {path}")
    with open(path, encoding="utf-8", errors="replace") as fh:
        return tuple(line.strip() for line in fh if line.strip())


def default_texts(split: str = "calib", source: str | Sequence[str] = "wiki") -> list[str]:
    """Documents of the fixed ``split`` ("calib" or "eval") of ``source`` ("wiki", "lee", or both).

    The two splits never share a document: each source's documents in file order are cut in half,
    the first half is "calib", the second "eval".
    """
    if split not in SPLITS:
        raise FmtlabError(f"unknown split {split!r}; expected one of {SPLITS}")
    sources = (source,) if isinstance(source, str) else tuple(source)
    if sources == ("all",):
        sources = SOURCES
    docs: list[str] = []
    for src in sources:
        if src == "wiki":
            all_docs = _wiki_articles()
        elif src == "lee":
            all_docs = _lee_documents()
        else:
            raise FmtlabError(f"unknown text source {src!r}; expected one of {SOURCES} or 'all'")
        half = len(all_docs) // 2
        docs.extend(all_docs[:half] if split == "calib" else all_docs[half:])
    return docs


def _encode(tokenizer, text: str) -> list[int]:
    try:  # transformers tokenizers: no "longer than the model's maximum" warning for long documents
        out = tokenizer(text, add_special_tokens=False, verbose=False)
    except TypeError:
        out = tokenizer(text, add_special_tokens=False)
    return list(out["input_ids"])


WINDOW_STARTS = ("request", "text")


def request_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids a tokenizer puts before and after the text of one request.

    Measured, not assumed: the ids of ``tokenizer("a")`` around those of ``"a"`` without special
    tokens. Gemma 3: ``([<bos>], [])``; BERT-style encoders: ``([CLS], [SEP])``; SmolLM2's
    tokenizer adds none: ``([], [])``. A tokenizer without ``add_special_tokens`` gives ``([], [])``.
    """
    try:
        full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        body = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    except TypeError:
        return [], []
    for i in range(len(full) - len(body) + 1):
        if full[i:i + len(body)] == body:
            return full[:i], full[i + len(body):]
    return [], []


def token_windows(tokenizer, texts: Sequence[str], seq_len: int, n_sequences: int | None = None,
                  prefix: str | None = None, separator: str = "\n\n",
                  start: str = "request") -> tuple[list[list[int]], int]:
    """Cut ``texts`` into consecutive windows of exactly ``seq_len`` token ids.

    The texts are joined with ``separator``, tokenized once without special tokens, and cut into
    non-overlapping windows; a ragged tail is dropped. ``start="request"`` (the default) frames
    every window as the tokenizer frames a request (:func:`request_frame`: Gemma's ``<bos>`` in
    front, an encoder's ``[CLS]`` ... ``[SEP]``; nothing for SmolLM2); ``start="text"`` cuts bare
    text windows that begin mid-document (to study the attention sink itself). With ``prefix``,
    its tokens follow the request's leading special tokens. Special and prefix tokens count toward
    ``seq_len``. Returns the windows and the number of leading tokens (special + prefix). Raises
    FmtlabError when the text is too short or ``start`` is unknown.
    """
    if seq_len < 1:
        raise FmtlabError(f"seq_len must be >= 1, got {seq_len=}")
    if n_sequences is not None and n_sequences < 1:
        raise FmtlabError(f"n_sequences must be >= 1, got {n_sequences=}")
    if start not in WINDOW_STARTS:
        raise FmtlabError(f"window start must be one of {WINDOW_STARTS}, got {start!r}")
    lead, tail = request_frame(tokenizer) if start == "request" else ([], [])
    prefix_ids: list[int] = list(lead)
    if prefix:
        prefix_ids += _encode(tokenizer, prefix)
    if len(prefix_ids) + len(tail) >= seq_len:
        raise FmtlabError(f"the prefix and special tokens take {len(prefix_ids) + len(tail)} tokens, "
                          f"not fewer than {seq_len=}")
    body = seq_len - len(prefix_ids) - len(tail)
    ids: list[int] = []
    need = None if n_sequences is None else n_sequences * body
    for doc in texts:  # tokenize document by document so that a short request stays fast
        chunk = (separator if ids else "") + doc
        ids.extend(_encode(tokenizer, chunk))
        if need is not None and len(ids) >= need:
            break
    n_avail = len(ids) // body
    if n_avail == 0 or (n_sequences is not None and n_avail < n_sequences):
        raise FmtlabError(
            f"the texts give {len(ids)} tokens: not enough for {n_sequences or 1} sequence(s) of "
            f"{body} text tokens")
    n = n_avail if n_sequences is None else n_sequences
    return [prefix_ids + ids[i * body:(i + 1) * body] + list(tail) for i in range(n)], len(prefix_ids)


def window_start_info(tokenizer, start: str = "request") -> dict:
    """What a trace manifest and a report's protocol state about how windows start."""
    lead, tail = request_frame(tokenizer) if start == "request" else ([], [])
    conv = getattr(tokenizer, "convert_ids_to_tokens", None)
    names = (lambda ids: list(conv(ids)) if conv and ids else [str(i) for i in ids])
    return {"start": start, "lead_ids": list(lead), "lead_tokens": names(lead),
            "tail_ids": list(tail), "tail_tokens": names(tail)}
