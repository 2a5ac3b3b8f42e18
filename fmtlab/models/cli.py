"""``fmtlab record``, ``fmtlab replay``, ``fmtlab outliers`` and ``fmtlab e2e``."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import time

from fmtlab.errors import FmtlabError
from fmtlab.models.loading import check_model_arg, load_model
from fmtlab.safe_io import atomic_write_text, check_file_stem, dumps_json, locked_dir, staged_dir

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.I)


def parse_size(text: str, option: str = "size") -> int:
    """'256M' -> 268435456 (powers of 1024; plain numbers are bytes); FmtlabError unless >= 1 byte
    and below 2**63."""
    m = _SIZE.match(str(text))
    if not m:
        raise FmtlabError(f"cannot read {option} {text!r:.40}; use e.g. 512M, 4G or a byte count")
    v = int(float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower()))
    if not 1 <= v < 2 ** 63:
        raise FmtlabError(f"{option} {text!r:.40} is {v} bytes; give at least 1 byte and less than 8 EiB")
    return v


def _texts(args):
    # lazy: fmtlab.sim loads numba and scipy; `fmtlab --help` imports this module
    from fmtlab.sim.data import default_texts

    if args.text_file:
        with open(args.text_file, encoding="utf-8") as fh:
            docs = [d for d in fh.read().split("\n\n") if d.strip()]
        return docs, {"source": os.path.abspath(args.text_file)}
    src = args.source.split(",") if args.source != "all" else "all"
    return default_texts(args.split, src), {"source": args.source, "split": args.split}


def _layers_regex(args) -> None:
    """Check ``--layers`` before any work (a bad regular expression is a one-line error)."""
    # lazy: fmtlab.sim loads numba and scipy; `fmtlab --help` imports this module
    from fmtlab.models.record import compile_layers

    if getattr(args, "layers", None):
        compile_layers(args.layers, "--layers")


def _positive(args, *names: str) -> None:
    """FmtlabError unless each option ``--name`` that is set is an integer >= 1."""
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v < 1:
            raise FmtlabError(f"--{n.replace('_', '-')} must be >= 1, got {v}")


def _check_writable_parent(path: str) -> None:
    """FmtlabError unless ``path`` could be created: its nearest existing ancestor is a writable folder."""
    parent = os.path.dirname(path)
    while not os.path.lexists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise FmtlabError(f"cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FmtlabError(f"cannot create {path}: {parent} is not writable")


def cmd_record(args) -> int:
    # lazy: fmtlab.sim loads numba and scipy; `fmtlab --help` imports this module
    from fmtlab.models.record import check_seq_len, record
    from fmtlab.sim.trace import check_trace_target, trace_lock

    # every argument is checked, and the target locked, before the model is loaded
    _layers_regex(args)
    _positive(args, "seq_len", "n_sequences", "batch_size")
    out = os.path.abspath(args.out)
    check_trace_target(out, args.overwrite)
    _check_writable_parent(out)
    memory_limit = parse_size(args.memory_limit, "--memory-limit")
    max_bytes = parse_size(args.max_bytes, "--max-bytes") if args.max_bytes is not None else None
    if args.text_file is not None and not os.path.isfile(args.text_file):
        raise FmtlabError(f"--text-file {args.text_file} is not a readable file")
    check_model_arg(args.model)
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
    except OSError as exc:
        raise FmtlabError(f"cannot create {os.path.dirname(out)}: {exc.strerror}") from None
    with trace_lock(out):  # a second `record` to the same --out fails now, not after the model loads
        check_trace_target(out, args.overwrite)
        texts, info = _texts(args)
        t0 = time.perf_counter()
        model, tok = load_model(args.model, trust_remote_code=args.trust_remote_code)
        check_seq_len(model, args.seq_len)
        t_load = time.perf_counter() - t0
        t1 = time.perf_counter()
        tr = record(model, tok, texts, out, seq_len=args.seq_len, n_sequences=args.n_sequences,
                    batch_size=args.batch_size, prefix=args.prefix, window_start=args.window_start,
                    layers=args.layers,
                    include_head=args.include_head, outputs=not args.no_outputs, weights=not args.no_weights,
                    residual=not args.no_residual, attention=args.attention, kv=args.kv, qkv=args.qkv,
                    memory_limit=memory_limit, max_bytes=max_bytes,
                    overwrite=args.overwrite, progress=not args.quiet, text_info=info)
        t_rec = time.perf_counter() - t1
    print(f"{tr}\n  model load {t_load:.1f} s, recording {t_rec:.1f} s, "
          f"{len(tr.manifest['shards'])} shard(s)")
    return 0


def trace_labels(paths: list[str]) -> list[str]:
    """A distinct row label per trace path: its folder name, or as many trailing path parts as it
    takes to tell traces apart whose folders share a name (``a/t``, ``b/t``); FmtlabError if a
    trace is given twice."""
    real = [os.path.realpath(p) for p in paths]
    dup = next((p for i, p in enumerate(paths) if real[i] in real[:i]), None)
    if dup is not None:
        raise FmtlabError(f"trace {dup} is given twice")
    parts = [os.path.abspath(p).strip(os.sep).split(os.sep) for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return real  # pragma: no cover - distinct real paths always differ in some suffix


def cmd_replay(args) -> int:
    # lazy: fmtlab.sim loads numba and scipy; `fmtlab --help` imports this module
    from fmtlab.sim.replay import E2E_CONFIGS, KINDS, PRESETS, ReplayResult, make_config, replay
    from fmtlab.sim.replay_engine import resolve_config
    from fmtlab.sim.trace import open_trace

    if args.list:
        for name, c in PRESETS.items():
            print(f"{name:<26} {c.describe()}")
        return 0
    if not args.traces:
        raise FmtlabError("replay needs a trace directory (or --list)")
    # every argument is checked before any trace is opened or the output is locked
    _layers_regex(args)
    check_file_stem(args.stem, "--stem")
    labels = trace_labels(args.traces)
    configs = args.config or list(E2E_CONFIGS)
    names = [make_config(c).name for c in configs]
    for c in configs:  # their quantizer specs and transforms resolve now, not after the traces open
        resolve_config(make_config(c))
    if len(set(names)) != len(names):
        raise FmtlabError(f"config names must be unique: {names}")
    kinds = args.kinds.split(",") if args.kinds else None
    bad = [k for k in kinds or () if k not in KINDS]
    if bad:
        raise FmtlabError(f"--kinds: unknown kinds {bad}; expected some of {list(KINDS)}")
    _positive(args, "max_tokens", "workers")
    for p in [*args.traces, *([args.calib] if args.calib else [])]:
        if not os.path.isdir(p):
            raise FmtlabError(f"no trace directory at {p}")
    verify = not args.no_verify
    total: ReplayResult | None = None
    with locked_dir(args.out), contextlib.ExitStack() as stack:  # locked before any work
        t0 = time.perf_counter()
        executor = None
        if args.scheduler:  # Dask: a LocalCluster of --workers processes, or a running cluster
            # lazy: fmtlab.sim loads numba and scipy; `fmtlab --help` imports this module
            from fmtlab.sim.executor import make_executor

            executor = stack.enter_context(make_executor(args.scheduler, args.workers))
        calib = open_trace(args.calib, verify=verify) if args.calib else None
        for path, label in zip(args.traces, labels):
            res = replay(open_trace(path, verify=verify), configs, layers=args.layers, kinds=kinds, calib=calib,
                         max_tokens=args.max_tokens, workers=args.workers, progress=not args.quiet,
                         executor=executor, label=label)
            total = res if total is None else total + res
        dt = time.perf_counter() - t0
        files = total.write(args.out, args.stem)
    print(total.summary("linear"))
    if any(r["kind"] != "linear" for r in total.rows):
        for kind in sorted({r["kind"] for r in total.rows if r["kind"] != "linear"}):
            print(f"\n[{kind}]")
            print(total.summary(kind))
    print(f"\nreplay: {len(total.rows)} rows in {dt:.1f} s -> " + ", ".join(files))
    return 0


def cmd_replay_attention(args) -> int:
    # lazy: fmtlab.sim loads numba and scipy; `fmtlab --help` imports this module
    from fmtlab.sim.attention_replay import (DEFAULT_ATTENTION_CONFIGS, parse_attention_config,
                                             replay_attention, summary_table)
    from fmtlab.sim.trace import open_trace  # lazy: as above

    configs = args.config or list(DEFAULT_ATTENTION_CONFIGS)
    for c in configs:  # resolved before any trace is opened
        parse_attention_config(c)
    _layers_regex(args)
    if args.json and os.path.isdir(args.json):
        raise FmtlabError(f"--json {args.json} is a directory; give a file name")
    for p in [args.trace, *([args.calib] if args.calib else [])]:
        if not os.path.isdir(p):
            raise FmtlabError(f"no trace directory at {p}")
    verify = not args.no_verify
    t0 = time.perf_counter()
    rows = replay_attention(open_trace(args.trace, verify=verify), configs, layers=args.layers,
                            calib=open_trace(args.calib, verify=verify) if args.calib else None, seed=args.seed)
    print(summary_table(rows))
    print(f"\nreplay-attention: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    if args.json:
        atomic_write_text(args.json, dumps_json({"rows": rows}))
    return 0


def cmd_outliers(args) -> int:
    # lazy: fmtlab.sim loads numba and scipy; `fmtlab --help` imports this module
    from fmtlab.sim.outliers import massive_activations, summarize_massive
    from fmtlab.sim.trace import open_trace

    _positive(args, "top_k")
    for opt in ("min_ratio", "min_abs"):
        v = getattr(args, opt)
        if not (math.isfinite(v) and v >= 0):
            raise FmtlabError(f"--{opt.replace('_', '-')} must be a finite number >= 0, got {v}")
    if args.json and os.path.isdir(args.json):
        raise FmtlabError(f"--json {args.json} is a directory; give a file name")
    rows = massive_activations(open_trace(args.trace, verify=not args.no_verify), top_k=args.top_k, min_ratio=args.min_ratio, min_abs=args.min_abs)
    print(f"{'layer':>5} {'pos':>5} {'seq':>4} {'channel':>7} {'value':>12} {'ratio':>10}  token")
    for r in rows:
        print(f"{r['layer']!s:>5} {r['token']:>5} {r['sequence']:>4} {r['channel']:>7} {r['value']:>12.2f} "
              f"{r['ratio']:>10.1f}  {r['token_str']!r}")
    s = summarize_massive(rows)
    print(f"\n{s['count']} massive activation(s)" + (
        f"; channels {s['channels'][:5]}, positions {s['positions'][:5]}; largest {s['max']}" if rows else ""))
    if args.json:
        atomic_write_text(args.json, dumps_json({"rows": rows, "summary": s}))
        print(f"-> {args.json}")
    return 0


def _read_replay_json(path: str) -> dict:
    """The replay.json at ``path``; FmtlabError unless it is a JSON object with a ``by_model`` list."""
    from fmtlab.sim.trace_checks import strict_json  # lazy: fmtlab.sim loads numba; `fmtlab --help` imports this module

    try:
        with open(path, "rb") as fh:
            doc = strict_json(fh.read(256 << 20).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FmtlabError(f"--replay {path}: cannot read it as JSON ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("by_model", []), list) \
            or not all(isinstance(r, dict) for r in doc.get("by_model", [])):
        raise FmtlabError(f"--replay {path} is not a replay.json (an object with a 'by_model' list of rows)")
    return doc


def cmd_e2e(args) -> int:
    # lazy: fmtlab.sim loads numba and scipy; `fmtlab --help` imports this module
    from fmtlab.models.record import check_seq_len
    from fmtlab.sim.replay import E2E_CONFIGS, make_config
    from fmtlab.sim.replay_engine import resolve_config

    # every argument is checked before the model is loaded
    _positive(args, "n_sequences", "batch_size")
    if args.seq_len < 2:
        raise FmtlabError(f"--seq-len must be >= 2 (a window predicts tokens 2..T), got {args.seq_len}")
    names = [make_config(c).name for c in args.config or ()]
    for c in args.config or ():
        resolve_config(make_config(c))
    if len(set(names)) != len(names):
        raise FmtlabError(f"config names must be unique: {names}")
    if args.replay:
        _read_replay_json(args.replay)
    if args.calib and not os.path.isdir(args.calib):
        raise FmtlabError(f"--calib {args.calib} is not a trace directory")
    check_model_arg(args.model)
    with contextlib.ExitStack() as stack:
        if args.out:  # checked and locked before any work; a second run fails at once
            stack.enter_context(locked_dir(args.out))
        configs = args.config or list(E2E_CONFIGS)
        model, tok = load_model(args.model, trust_remote_code=args.trust_remote_code)
        check_seq_len(model, args.seq_len)
        return _e2e(args, model, tok, configs)


def _e2e(args, model, tok, configs) -> int:
    # lazy: torch (models.perplexity) and numba (fmtlab.sim) stay out of `fmtlab --help`
    from fmtlab.models.perplexity import eval_windows, perplexity, rank_agreement
    from fmtlab.sim.replay import rows_to_csv
    from fmtlab.sim.trace import open_trace

    calib = open_trace(args.calib, verify=not args.no_verify) if args.calib else None
    ids = eval_windows(tok, args.seq_len, args.n_sequences)
    rows = []
    for c in configs:
        r = perplexity(model, tok, c, ids=ids, batch_size=args.batch_size, progress=not args.quiet,
                       calib=calib)
        rows.append(r)
        print(f"{r['config']:<24} ppl {r['ppl']:>10.3f}   ({r['description']}; {r['seconds']:.1f} s)", flush=True)
    doc = {"model": args.model, "seq_len": args.seq_len, "n_sequences": args.n_sequences,
           "tokens": rows[0]["tokens"] if rows else 0, "rows": rows}
    if args.replay:
        rep = _read_replay_json(args.replay)
        ppl = {r["config"]: r["ppl"] for r in rows}
        doc["rank_agreement"] = {}
        for key in ("pooled_out_sqnr_db", "mean_out_tok_sqnr_db", "mean_out_sqnr_db", "min_out_sqnr_db",
                    "mean_a_sqnr_db", "mean_w_sqnr_db"):
            metric = {}
            for r in rep.get("by_model", []):
                if r.get("kind") == "linear":
                    v = r.get(key)
                    metric[r["config"]] = math.inf if v == "inf" else (math.nan if v is None else float(v))
            agree = rank_agreement(ppl, metric)
            doc["rank_agreement"][key] = agree
            for r in rows:
                r[f"replay_{key}"] = metric.get(r["config"], math.nan)
            print(f"Spearman(ppl, -{key}) = {agree['spearman']:.3f}; disagreeing pairs: "
                  f"{agree['disagreements'] or 'none'}")
    if args.out:
        with staged_dir(args.out) as stage:  # e2e.json and e2e.csv appear together
            atomic_write_text(os.path.join(stage, "e2e.json"), dumps_json(doc))
            atomic_write_text(os.path.join(stage, "e2e.csv"), rows_to_csv(rows))
        print(f"-> {args.out}/e2e.json, e2e.csv")
    return 0


def register(subparsers) -> None:
    """Add the simulator's subcommands to the ``fmtlab`` parser."""
    p = subparsers.add_parser("record", help="record a model's activations on offline text into a trace",
                              description="Run a model on fixed windows of offline text and store Linear-layer "
                              "inputs, weights and outputs (and optionally residual stream, attention "
                              "probabilities, K/V) as a trace: safetensors shards + manifest.json.")
    p.add_argument("--model", default="smollm2", help="smollm2 (default), minilm, gemma3, qwen2.5-coder-1.5b, mpnet, a checkpoint dir or a .gguf file")
    p.add_argument("--out", default="traces/smollm2", help="trace directory to create (default traces/smollm2)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--n-sequences", type=int, default=4, help="number of sequences (default 4)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--source", default="wiki", help="wiki, lee, all or wiki,lee (gensim's offline texts)")
    p.add_argument("--split", default="calib", choices=("calib", "eval"))
    p.add_argument("--text-file", help="use this UTF-8 file instead (documents separated by blank lines)")
    p.add_argument("--prefix", help="text put before every sequence (attention-sink studies)")
    p.add_argument("--window-start", default="request", choices=("request", "text"),
                   help="request (default): each window starts as the tokenizer starts a request (Gemma's <bos>); "
                        "text: bare text windows (studies of the attention sink itself)")
    p.add_argument("--layers", help="regular expression selecting Linear layers by name")
    p.add_argument("--include-head", action="store_true", help="also record the output head")
    p.add_argument("--no-outputs", action="store_true", help="do not store layer outputs")
    p.add_argument("--no-weights", action="store_true", help="do not store weights (replay then skips layers)")
    p.add_argument("--no-residual", action="store_true", help="do not store the residual stream")
    p.add_argument("--attention", action="store_true", help="store attention probabilities")
    p.add_argument("--kv", action="store_true", help="mark/store K and V projections (before RoPE: statistics)")
    p.add_argument("--qkv", action="store_true",
                   help="store what each attention layer reads: Q after RoPE and the cache's K, V after RoPE, per "
                        "head (for `fmtlab replay-attention`; with --attention also P, heads x seq_len^2 x 4 bytes "
                        "per sequence and layer)")
    p.add_argument("--memory-limit", default="256M", help="RAM buffered before a shard is written (default 256M)")
    p.add_argument("--max-bytes", help="refuse traces estimated larger than this (e.g. 4G)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is an fmtlab trace (anything else is refused)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a checkpoint's own Python code (config auto_map) to run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_record)

    p = subparsers.add_parser("replay", help="replay a trace through quantizer configs; write CSV and JSON",
                              description="Measure underflow, clipping, MSE, SQNR and layer-output error of every "
                              "recorded tensor under each config.")
    p.add_argument("traces", nargs="*", help="trace directories (several: rows are tagged by trace)")
    p.add_argument("--config", "-c", action="append",
                   help="preset name (see --list) or 'name:w=SPEC;a=SPEC;t=TRANSFORM'; repeatable "
                        "(default: the end-to-end set)")
    p.add_argument("--list", action="store_true", help="list preset configs and exit")
    p.add_argument("--out", default="out/replay", help="output directory (default out/replay)")
    p.add_argument("--stem", default="replay", help="file name stem (default replay)")
    p.add_argument("--layers", help="regular expression selecting tensors by name")
    p.add_argument("--kinds", help="comma list of linear,residual,attn_probs,key,value (default all recorded)")
    p.add_argument("--calib", help="trace to fit static transforms (SmoothQuant, AQAS) on")
    p.add_argument("--max-tokens", type=int, help="replay only the first N token rows")
    p.add_argument("--workers", type=int, help="threads (default: CPU count, at most 4); with --scheduler "
                   "local: Dask worker processes (default 2)")
    p.add_argument("--scheduler", help="run on Dask: 'local' (a LocalCluster of --workers processes) or the "
                   "address / scheduler file of a running cluster (workers must see the trace paths)")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of the trace shards")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = subparsers.add_parser("replay-attention", help="score KV-cache / attention specs on a trace recorded with --qkv",
                              description="Quantize the recorded K, V (KV-cache spec) and Q, K, P, V (attention preset) "
                              "as quantize_model does, recompute the attention output per head in float32 and report "
                              "its SQNR per layer (seeded bootstrap over sequences) and the underflow / clipping of "
                              "K, V and P.")
    p.add_argument("trace", help="trace directory recorded with `fmtlab record --qkv`")
    p.add_argument("--config", "-c", action="append",
                   help="'kv=SPEC', 'attn=PRESET' or 'kv=SPEC;attn=PRESET'; repeatable (default: KV INT8 / INT4 "
                        "per token, FP8 per tensor, NVFP4, fp8_fa3, sage_int8_fp8, mxfp8)")
    p.add_argument("--calib", help="calibration trace (recorded with --qkv) for @static KV specs")
    p.add_argument("--layers", help="regular expression selecting attention layers by name")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of the trace shards")
    p.set_defaults(func=cmd_replay_attention)

    p = subparsers.add_parser("outliers", help="list massive activations of a trace's residual stream")
    p.add_argument("trace")
    p.add_argument("--top-k", type=int, default=4, help="values per layer (default 4)")
    p.add_argument("--min-ratio", type=float, default=100.0, help="minimum |x| / median |x| (default 100)")
    p.add_argument("--min-abs", type=float, default=0.0, help="minimum |x| (the paper uses 100)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of the trace shards")
    p.set_defaults(func=cmd_outliers)

    p = subparsers.add_parser("e2e", help="perplexity per quantization config on held-out text",
                              description="End-to-end check: W/A fake-quant perplexity of the model for each "
                              "config; with --replay, compare with the replay's layer-error ranking.")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--config", "-c", action="append", help="config as for replay (default: the end-to-end set)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--n-sequences", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--replay", help="replay.json to compare rankings with")
    p.add_argument("--calib", help="calibration trace (fmtlab record of the calib texts) for static scales "
                   "and fitted transforms (w8a8_int_tensor_static, SmoothQuant, AQAS)")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of the --calib trace")
    p.add_argument("--out", default="out/e2e", help="output directory (default out/e2e)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a checkpoint's own Python code (config auto_map) to run")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_e2e)


def main(argv=None) -> int:  # pragma: no cover - convenience for python -m fmtlab.models.cli
    parser = argparse.ArgumentParser(prog="fmtlab-sim")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except FmtlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
