"""The report's "Methods from the papers" section, and `fmtlab methods` (the claims alone).

:func:`run_claims` runs the requested claims (``"all"``, ``"none"`` or comma-separated keys of
:func:`fmtlab.analysis.methods.list_claims`) on one :class:`MethodsContext`;
:func:`add_section` renders one table per claim (paper, statement, measured numbers with their
95% intervals, verdict, reason, run time) into a :class:`fmtlab.analysis.document.Document`.
`fmtlab report --methods ...` adds the section to the report (default ``none``: the default report
takes no longer); `fmtlab methods` writes ``methods.md`` / ``methods.html`` / ``methods.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

from fmtlab.analysis.document import Document
from fmtlab.analysis.methods import Claim, ClaimResult, MethodsContext, get_claim, list_claims
from fmtlab.analysis.tables import write_json
from fmtlab.errors import FmtlabError
from fmtlab.sim.data import default_texts

__all__ = ["parse_methods", "make_context", "run_claims", "add_section", "result_rows", "register_cli",
           "write_methods"]


def parse_methods(spec: "str | Sequence[str] | None") -> tuple[str, ...]:
    """Claim keys of ``spec``: ``"none"``/empty -> (), ``"all"`` -> every registered claim, else the
    comma-separated keys (each checked; FmtlabError names an unknown one)."""
    if spec is None:
        return ()
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items or items == ["none"]:
        return ()
    known = list_claims()
    if items == ["all"]:
        return tuple(known)
    bad = [k for k in items if k not in known]
    if bad:
        raise FmtlabError(f"unknown method claim(s) {bad}; known: {', '.join(known) or '(none)'}, all, none")
    return tuple(dict.fromkeys(items))


def make_context(model, tokenizer, *, seq_len: int = 128, n_calib: int = 4, n_eval: int = 8, seed: int = 0,
                 quick: bool = False, calib_texts: Sequence[str] | None = None,
                 eval_texts: Sequence[str] | None = None) -> MethodsContext:
    """A context on the fixed "calib" / "eval" splits of the shipped texts (unless given)."""
    if seq_len < 2 or n_calib < 2 or n_eval < 2:
        raise FmtlabError(f"claims need seq_len >= 2 and >= 2 calibration and evaluation sequences (for "
                          f"intervals), got {seq_len=}, {n_calib=}, {n_eval=}")
    return MethodsContext(model, tokenizer, list(calib_texts or default_texts("calib")),
                          list(eval_texts or default_texts("eval")), seq_len, n_calib, n_eval, seed, quick)


def run_claims(keys: Sequence[str], ctx: MethodsContext,
               progress: bool = False) -> list[tuple[Claim, ClaimResult]]:
    """Run each claim's experiment in order; ``seconds`` is measured here (wall clock of run)."""
    out = []
    for k in keys:
        claim = get_claim(k)
        if progress:
            print(f"method claim {k}: {claim.method} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        res = claim.run(ctx)
        if not isinstance(res, ClaimResult):
            raise FmtlabError(f"claim {k!r} returned {type(res).__name__}, not a ClaimResult")
        res = ClaimResult(res.key, res.measured, res.verdict, res.reason, res.numbers,
                          round(time.perf_counter() - t0, 1))
        if progress:
            print(f"method claim {k}: {res.verdict.value} ({res.seconds:.0f} s)", file=sys.stderr, flush=True)
        out.append((claim, res))
    return out


def run_for_report(opts, model, tokenizer, step) -> list[tuple[Claim, ClaimResult]]:
    """The claims of ``opts.methods`` (a ReportOptions) on the report's perplexity windows
    (``ppl_seq_len`` tokens, ``ppl_sequences`` eval / ``n_sequences`` calib windows, at least 2)."""
    from fmtlab.models.record import check_seq_len  # lazy: imports torch

    check_seq_len(model, opts.ppl_seq_len + 8)  # room for a CushionCache prefix of up to 8 tokens
    step(f"method claims: {', '.join(opts.methods)}")
    ctx = make_context(model, tokenizer, seq_len=opts.ppl_seq_len, n_calib=max(2, opts.n_sequences),
                       n_eval=max(2, opts.ppl_sequences))
    return run_claims(opts.methods, ctx, progress=opts.progress)


def result_rows(results: Sequence[tuple[Claim, ClaimResult]]) -> list[dict[str, Any]]:
    """JSON-safe rows: key, method, paper, statement, measured, verdict, reason, seconds, numbers."""
    return [{"key": c.key, "method": c.method, "paper": c.paper, "statement": c.statement, "measured": r.measured,
             "verdict": r.verdict.value, "reason": r.reason, "seconds": r.seconds, "numbers": r.numbers}
            for c, r in results]


def add_section(doc, results: Sequence[tuple[Claim, ClaimResult]], ctx: MethodsContext | None = None) -> None:
    """Append the "Methods from the papers" section (a summary table, then one table per claim)."""
    doc.heading("Methods from the papers")
    where = ("" if ctx is None else f" Each claim is measured on {ctx.n_eval} evaluation windows of {ctx.seq_len} "
             f"tokens (calibration: {ctx.n_calib} windows of the disjoint split), seed {ctx.seed}.")
    doc.paragraph("Each paper's claim re-measured on this model with the measurement protocol (seeded 95% "
                  "bootstrap intervals over sequences, paired intervals for differences). A claim that does not "
                  "reproduce on a small model is a finding about that model, not a failure of the run." + where)
    if not results:
        doc.paragraph("(no claims were run: `--methods all` or a list of keys runs them)")
        return
    doc.table([{"claim": c.key, "method": c.method, "verdict": r.verdict.value, "seconds": r.seconds}
               for c, r in results], ["claim", "method", "verdict", "seconds"],
              headers={"seconds": "run time [s]"})
    for c, r in results:
        doc.heading(f"{c.method} (`{c.key}`)", level=3)
        doc.table([{"item": "paper", "value": c.paper}, {"item": "statement", "value": c.statement},
                   {"item": "measured (95% CI)", "value": r.measured}, {"item": "verdict", "value": r.verdict.value},
                   {"item": "reason", "value": r.reason}, {"item": "run time", "value": f"{r.seconds:.1f} s"}],
                  ["item", "value"])


def write_methods(results, ctx: MethodsContext, out: str | Path, title: str) -> tuple[Path, Path, Path]:
    """methods.md, methods.html and methods.json in folder ``out`` (created; files written atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = Document(title)
    add_section(doc, results, ctx)
    md, html = doc.write(out, stem="methods")
    js = write_json({"context": {"seq_len": ctx.seq_len, "n_calib": ctx.n_calib, "n_eval": ctx.n_eval,
                                 "seed": ctx.seed, "quick": ctx.quick}, "claims": result_rows(results)},
                    out / "methods.json")
    return md, html, js


# ------------------------------------------------------------------------------------- CLI

def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "methods", help="re-measure the papers' claims (CushionCache, massive activations, ...) on a model",
        description="Run the 'Methods from the papers' claims alone and write methods.md/.html/.json.")
    p.add_argument("--claims", default="all", help="'all' or comma-separated claim keys (default: all)")
    p.add_argument("--list", action="store_true", help="list the registered claims and exit")
    p.add_argument("--model", default=None, help="embedded model name or a local checkpoint (default: SmolLM2-135M)")
    p.add_argument("--out", default="fmtlab-methods", help="output folder (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window (default: 128)")
    p.add_argument("--calib-sequences", type=int, default=4, help="calibration windows (default: 4)")
    p.add_argument("--eval-sequences", type=int, default=8, help="evaluation windows (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--quick", action="store_true", help="smallest runs that exercise every step")
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    if args.list:
        for k in list_claims():
            c = get_claim(k)
            print(f"{k}: {c.method} -- {c.paper}")
        return 0
    keys = parse_methods(args.claims)
    if not keys:
        raise FmtlabError("--claims selects no claim")
    from fmtlab.models.loading import load_default_model, load_model, model_name  # lazy: imports torch
    from fmtlab.models.record import check_seq_len  # lazy: imports torch

    model, tok = load_default_model() if args.model is None else load_model(args.model)
    check_seq_len(model, args.seq_len + 8)  # room for a CushionCache prefix of up to 8 tokens
    ctx = make_context(model, tok, seq_len=args.seq_len, n_calib=args.calib_sequences,
                       n_eval=args.eval_sequences, seed=args.seed, quick=args.quick)
    results = run_claims(keys, ctx, progress=True)
    md, _, js = write_methods(results, ctx, args.out, f"fmtlab methods: {model_name(model)}")
    for c, r in results:
        print(f"{c.key}: {r.verdict.value} ({r.seconds:.0f} s) -- {r.measured}")
    print(f"methods: {md}  (json: {js})")
    return 0
