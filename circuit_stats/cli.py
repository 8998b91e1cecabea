"""``circuit-stats``: scan training checkpoints, write reports, run the bundled demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from . import arguments as arg
from .evaluation.cli import add_parser as add_eval
from .command_model import load_command_model
from .tokenization import load_tokenizer


def print_outcome(outcome, out: Path, seconds: float) -> int:
    """One line on what this run did, then what failed; the exit status (0 only if nothing failed)."""
    notes = [f"{len(outcome.already_done)} already done"] if outcome.already_done else []
    if outcome.duplicates:
        notes.append(f"{len(outcome.duplicates)} written as duplicates of identical weights")
    if outcome.busy:
        notes.append(f"{len(outcome.busy)} being scanned by another process")
    if outcome.failed:
        notes.append(f"{len(outcome.failed)} failed")
    shard = f" (shard {outcome.shard})" if outcome.shard.count > 1 else ""
    print(f"scanned {len(outcome.scanned)} revisions{shard} in {seconds:.1f}s"
          + (f" ({', '.join(notes)})" if notes else "")
          + (f" -> {out / 'results.parquet'}" if len(outcome.results) else f"; {out / 'results.parquet'} holds nothing yet"))
    if outcome.failed:
        print(f"failed revisions ({len(outcome.failed)}), recorded in {out / 'failed'}:", file=sys.stderr)
        for revision, error in outcome.failed.items():
            print(f"  {revision}: {error}", file=sys.stderr)
    if outcome.stopped:
        print(outcome.stopped, file=sys.stderr)
    return 0 if outcome.ok else 1


def default_revisions(model: str) -> str:
    """``--revisions`` when not given: every checkpoint of a local directory, the paper's list for a hub id."""
    return "all" if Path(model).is_dir() else "paper"


def cmd_scan(a) -> int:
    arg.check_out_dir(a.out)
    from .scans.report import write_report
    from .scans.scan import scan
    from .sharding import parse_shard

    t0 = time.time()
    outcome = scan(a.model, a.out, revisions_spec=default_revisions(a.model) if a.revisions is None else a.revisions, protocol=a.protocol,
                   refine=a.refine, limit_tokens=a.limit_tokens, protocol_options=dict(a.option or []), dtype=a.dtype,
                   device=a.device, batch_size=a.batch_size, tokenizer=a.tokenizer, delete_after=a.delete_after,
                   tokens_per_step=a.tokens_per_step, prefetch=a.prefetch,
                   max_consecutive_failures=a.max_consecutive_failures,
                   shard=parse_shard(a.shard) if a.shard else None, check_weights=not a.no_weights_check)
    status = print_outcome(outcome, Path(a.out), time.time() - t0)
    if a.report and len(outcome.results):
        if outcome.shard.count > 1:
            print(f"shard {outcome.shard}: run `circuit-stats report {a.out}` once every shard has finished")
        else:
            write_report(a.out)
            print(f"report -> {Path(a.out) / 'report'}")
    return status


def cmd_report(a) -> int:
    if not Path(a.dir).is_dir():
        raise ValueError(f"DIR {a.dir} is not a directory (a scan output directory)")
    if a.out:
        arg.check_out_dir(a.out)
    from .scans.report import write_report

    screens = {}
    if a.induction_min_heads is not None:
        screens["induction_min_heads"] = a.induction_min_heads
    if a.first_token_min_fraction is not None:
        screens["first_token_min_fraction"] = a.first_token_min_fraction
    write_report(a.dir, a.out, screens)
    out = Path(a.out) if a.out else Path(a.dir) / "report"
    print((out / "summary.md").read_text())
    print(f"report -> {out}")
    return 0


def cmd_revisions(a) -> int:
    from .scans.catalog import revisions, select_revisions
    from .scans.integrity import duplicate_groups, weights_digest

    catalog = revisions(a.model, tokens_per_step=a.tokens_per_step, offline=a.offline or None)
    selected = select_revisions(catalog, a.revisions, str(a.model))
    if not a.check:
        print("revision\tstep\ttokens")
        for r in selected:
            print(f"{r.revision}\t{r.step}\t{'' if r.tokens is None else r.tokens}")
        return 0
    digests, unknown = {}, {}
    for r in selected:
        try:
            digests[r.revision] = weights_digest(a.model, r.revision)
        except Exception as err:  # report every revision it could not identify
            unknown[r.revision] = f"{type(err).__name__}: {err}"
    dup_of = duplicate_groups(digests, [r.revision for r in selected])
    groups: dict[str, list[str]] = {}
    for rev, kept in dup_of.items():
        groups.setdefault(kept, []).append(rev)
    for kept, dups in groups.items():
        print(f"identical weights: {', '.join(dups)} = {kept} (a scan keeps {kept}, sha256 {digests[kept][:12]})")
    print(f"{len(selected)} revisions checked: {len(dup_of)} duplicate{'s' if len(dup_of) != 1 else ''} in "
          f"{len(groups)} group{'s' if len(groups) != 1 else ''}" + (f", {len(unknown)} not identified" if unknown else ""))
    for rev, err in unknown.items():
        print(f"  {rev}: {err}", file=sys.stderr)
    return 1 if unknown else 0


def cmd_demo(a) -> int:
    arg.check_out_dir(a.out)
    from .demo.series import DEMO_REPEAT_OPTIONS, demo_series_dir
    from .scans.report import write_report
    from .scans.scan import scan
    from .sharding import Shard

    out = Path(a.out)
    t0 = time.time()
    print(f"scanning the bundled demo series ({demo_series_dir()}) with the fused kernel, protocol 'repeat'")
    outcome = scan(demo_series_dir(), out, revisions_spec="all", protocol="repeat",
                   protocol_options=dict(DEMO_REPEAT_OPTIONS), dtype="float32", device=a.device, shard=Shard())
    if not outcome.ok:
        return print_outcome(outcome, out, time.time() - t0)
    summary = write_report(out)
    onset = summary["classes"]["induction"]["onset"]
    print((out / "report" / "summary.md").read_text())
    print(f"induction onset: {onset['revision'] if onset else 'not reached'}; "
          f"done in {time.time() - t0:.1f}s; report in {out / 'report'}")
    return 0


def cmd_profile(a) -> int:
    """Position-resolved statistics of every head over a corpus (see circuit_stats.profiling)."""
    docs, tokenizer = profile_inputs(a)
    from .sharding import local_device

    a.device = local_device(a.device)
    model = load_command_model(a)
    from .profiling import profile
    from .scans.settings import normalised_model

    t0 = time.time()
    try:
        df = profile(model, docs, tokenizer=tokenizer, out=a.out, position_bins=a.bins, statistics=a.statistics,
                     local_window=a.local_window, chunk_size=a.chunk_size, max_tokens=a.max_tokens,
                     sink_eps=a.sink_eps, sink_min_queries=a.sink_min_queries, plots=not a.no_plots, model_name=normalised_model(a.model), revision=a.revision, shard=a.shard)
    except RuntimeError as err:  # no document could be profiled
        print(f"circuit-stats profile: error: {err}", file=sys.stderr)
        return 1
    return print_profile_outcome(df, Path(a.out), a.shard, len(docs), time.time() - t0)


def print_profile_outcome(df, out: Path, shard, n_documents: int, seconds: float) -> int:
    """What ``profile`` wrote, then what failed; the exit status (1 when a document failed: this
    shard's, or any once every document is done)."""
    from .profiling.writer import ProfileDir

    store = ProfileDir(out, shard)
    complete = store.complete(n_documents)
    done = store.done()
    failed = store.all_failures() if complete else {i: f for i, f in store.failures().items() if i not in done}
    mine = df[df["doc_index"] % shard.count == shard.index].drop_duplicates("doc_index") if len(df) else df
    who = f"shard {shard}: " if shard.count > 1 else ""
    print(f"{who}profiled {len(mine)} documents ({int(mine['n_tokens'].sum()) if len(mine) else 0} tokens) "
          f"in {seconds:.1f}s")
    if complete:
        print(f"every document done: {df['doc_index'].nunique()} profiled -> {out / 'profile.parquet'}, "
              f"{out / 'summary.md'}, {out / 'plots'}")
    else:
        print(f"{n_documents - len(done) - len(store.all_failures())} documents left to other processes: the last "
              f"one to finish writes {out / 'profile.parquet'} (or rerun this command without --shard)")
    if failed:
        name = "failures.json" if complete else store.failures_path.name
        print(f"circuit-stats profile: {len(failed)} documents failed, see {out / name}", file=sys.stderr)
        return 1
    return 0


def profile_inputs(a) -> tuple:
    """The documents and tokenizer of ``circuit-stats profile``, after checking ``--out``, the
    model path and ``--device``; before the model loads and before anything is written."""
    arg.check_out_dir(a.out)
    arg.check_model_source(a.model)
    from .profiling.corpus import read_corpus
    from .scans.settings import check_device

    check_device(a.device)
    from .sharding import resolve_shard

    a.shard = resolve_shard(a.shard)
    docs = read_corpus(a.texts, text_field=a.text_field, split=a.split)
    from transformers import AutoConfig

    try:  # the config alone: a wrong model name is named as such, not as a missing tokenizer
        AutoConfig.from_pretrained(a.model, revision=a.revision)
    except (OSError, ValueError) as err:
        raise ValueError(f"model {a.model}: no model config could be loaded ({type(err).__name__}: {err})") from None
    tokenizer = "bytes" if a.tokenizer == "bytes" else load_tokenizer(
        a.tokenizer or a.model, revision=None if a.tokenizer else a.revision, what="--tokenizer")
    return docs, tokenizer


def add_scan(sub) -> None:
    s = sub.add_parser("scan", help="score every head at every selected revision")
    s.add_argument("model", help="hub model id (e.g. EleutherAI/pythia-1b) or a local checkpoint directory")
    s.add_argument("--revisions", default=None,
                   help="all | paper | every:N | log:K | comma list of revision names "
                        "(default: all for a local directory, paper for a hub id)")
    s.add_argument("--protocol", default="xu2026", choices=arg.PROTOCOL_NAMES)
    s.add_argument("--out", required=True, help="output directory (resumable)")
    s.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="load weights in this dtype (default: the checkpoint's)")
    s.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu")
    s.add_argument("--batch-size", type=arg.positive_int, default=None)
    s.add_argument("--tokenizer", default=None,
                   help="text protocols (natural, sink): 'bytes' or a tokenizer name/path (default: each checkpoint's own)")
    s.add_argument("--refine", action="store_true", help="bisect the sharpest class-fraction jump")
    s.add_argument("--delete-after", action="store_true", help="delete each downloaded revision once scanned")
    s.add_argument("--limit-tokens", type=arg.positive_number, default=None, help="skip revisions trained on more tokens")
    s.add_argument("--tokens-per-step", type=arg.positive_int, default=None, help="for local checkpoints without token counts")
    s.add_argument("--option", action="append", type=arg.key_value, metavar="KEY=VALUE",
                   help="protocol option, e.g. n_sequences=500")
    s.add_argument("--report", action="store_true", help="write the report when the scan ends")
    s.add_argument("--prefetch", type=arg.nonnegative_int, default=0, metavar="N",
                   help="download up to N next revisions in the background while one is scored (default 0)")
    s.add_argument("--shard", default=None, metavar="I/N",
                   help="scan shard I of N (0-based); default: from torchrun (RANK/WORLD_SIZE) or a SLURM array")
    s.add_argument("--max-consecutive-failures", type=arg.positive_int, default=3, metavar="K",
                   help="stop after K consecutive revisions fail with the same error (default 3)")
    s.add_argument("--no-weights-check", action="store_true",
                   help="do not identify identical weights across revisions (no hub metadata requests)")
    s.set_defaults(func=cmd_scan)


def add_report(sub) -> None:
    r = sub.add_parser("report", help="write summary.json, summary.md and plots for a scan")
    r.add_argument("dir", help="a scan output directory")
    r.add_argument("--out", default=None, help="report directory (default DIR/report)")
    r.add_argument("--induction-min-heads", type=arg.nonnegative_int, default=None)
    r.add_argument("--first-token-min-fraction", type=arg.fraction, default=None)
    r.set_defaults(func=cmd_report)


def add_revisions(sub) -> None:
    v = sub.add_parser("revisions", help="list a model's checkpoint catalog")
    v.add_argument("model")
    v.add_argument("--revisions", default="all")
    v.add_argument("--tokens-per-step", type=arg.positive_int, default=None)
    v.add_argument("--offline", action="store_true", help="use the built-in schedule, do not ask the hub")
    v.add_argument("--check", action="store_true",
                   help="group revisions holding identical weights (hub file metadata, or hashes of local files)")
    v.set_defaults(func=cmd_revisions)


def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="scan the bundled tiny checkpoint series and write its report")
    d.add_argument("--out", default="circuit-stats-demo")
    d.add_argument("--device", default=None)
    d.set_defaults(func=cmd_demo)


def add_profile(sub) -> None:
    f = sub.add_parser("profile", help="attention statistics of every head against query position over a corpus")
    f.add_argument("model", help="hub model id or a local checkpoint directory")
    f.add_argument("--revision", default=None)
    f.add_argument("--texts", required=True,
                   help=".txt file or directory, .jsonl, .parquet, or hf:DATASET "
                        "(needs `pip install circuit-stats[datasets]`)")
    f.add_argument("--out", required=True, help="output directory (resumable)")
    f.add_argument("--tokenizer", default=None,
                   help="tokenizer name (default: the model's), or 'bytes' for a byte-level model")
    f.add_argument("--text-field", default="text", help="field / column holding the text (.jsonl, .parquet, hf:)")
    f.add_argument("--split", choices=["blocks", "file"], default="blocks",
                   help=".txt: one document per blank-line block (default) or per file")
    f.add_argument("--bins", type=arg.position_bins, default="log2",
                   help="log2, or comma-separated edges, e.g. 0,64,512,4096,inf")
    f.add_argument("--statistics", type=arg.statistics, default=list(arg.STATISTICS),
                   help=f"comma list of {', '.join(arg.STATISTICS)} (default: all of these), and key_attention "
                        "(attention received per bin of key position: key_position_attention.png)")
    f.add_argument("--local-window", type=arg.positive_int, default=16, help="W of the 'local' statistic (last W keys)")
    f.add_argument("--sink-eps", type=arg.fraction, default=arg.SINK_EPS,
                   help="with key_attention: alpha_k above which a key is a sink in sink_tokens.parquet (Gu et al.'s eps)")
    f.add_argument("--sink-min-queries", type=arg.positive_int, default=arg.SINK_MIN_QUERIES,
                   help="with key_attention: the fewest queries after a key for its alpha_k to count")
    f.add_argument("--chunk-size", type=arg.positive_int, default=1024, help="tokens per forward (chunked prefill)")
    f.add_argument("--max-tokens", type=arg.positive_int, default=None,
                   help="truncate documents (default: the model's context; more than a learned position table "
                        "holds is refused)")
    arg.add_run_options(f)
    f.add_argument("--shard", default=None, metavar="I/N",
                   help="profile documents I, I+N, ... (0-based) into the shared --out; default: from torchrun "
                        "(RANK/WORLD_SIZE) or a SLURM array. The last process to finish writes the merged outputs")
    f.set_defaults(func=cmd_profile)


# One function per command: it adds the command's parser and sets ``func`` to run it.
COMMANDS = (add_scan, add_report, add_revisions, add_demo, add_profile, add_eval)


def build_parser() -> argparse.ArgumentParser:
    """The ``circuit-stats`` parser; building and using it imports no torch."""
    p = argparse.ArgumentParser(prog="circuit-stats", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def check_kernel_pins() -> None:
    """Pinned Triton configs (``CIRCUIT_STATS_TRITON_*``) parse, before any model loads: a
    ``ValueError`` otherwise. Imports the kernels only when such a variable is set."""
    if any(name.startswith("CIRCUIT_STATS_TRITON_") for name in os.environ):
        from .kernels.pinning import check_pins

        check_pins()


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad argument (2, argparse has printed why)
        return stop.code
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        check_kernel_pins()
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"circuit-stats {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"circuit-stats {args.command}: interrupted; finished work is kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
