"""``circuit-stats eval``: lm-eval tasks with per-head statistics per document (one self-contained
command: ``add_parser(subparsers)`` and ``run(args)``; the parser imports no torch)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import arguments as arg
from .requirement import require_lm_eval


def task_list(text: str) -> list[str]:
    """``T1,T2``: a non-empty comma list of task names."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma list of lm-eval task names")
    return names


def json_object(text: str) -> dict:
    """``--metadata``: a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"max_seq_lengths\": [4096]}}' ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="lm-evaluation-harness tasks with per-head statistics per document "
                                    "(needs `pip install circuit-stats[eval]`)")
    e.add_argument("model", help="hub model id or a local checkpoint directory (with its tokenizer)")
    e.add_argument("--revision", default=None)
    e.add_argument("--tokenizer", default=None, help="a transformers tokenizer name or folder (default: the model's)")
    e.add_argument("--tasks", type=task_list, required=True, help="comma list of lm-eval task names")
    e.add_argument("--include-path", default=None, help="a folder of task YAMLs (lm-eval's --include_path)")
    e.add_argument("--limit", type=arg.positive_number, default=None, help="documents per task (lm-eval's --limit)")
    e.add_argument("--num-fewshot", type=arg.nonnegative_int, default=None)
    e.add_argument("--metadata", type=json_object, default=None,
                   help="JSON object passed to every task (lm-eval's --metadata), e.g. RULER's "
                        "'{\"tokenizer\": \"MODEL\", \"max_seq_lengths\": [4096, 8192]}'")
    e.add_argument("--out", required=True, help="output directory (resumable)")
    e.add_argument("--bins", type=arg.position_bins, default="log2",
                   help="log2, or comma-separated edges, e.g. 0,64,512,4096,inf")
    e.add_argument("--statistics", type=arg.statistics, default=list(arg.STATISTICS),
                   help=f"comma list of {', '.join(arg.STATISTICS)}")
    e.add_argument("--local-window", type=arg.positive_int, default=16, help="W of the 'local' statistic (last W keys)")
    e.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="default: the checkpoint's on a GPU, float32 on the CPU")
    e.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    e.add_argument("--no-plots", action="store_true")
    e.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N (0-based) of every task's documents; default: from torchrun "
                        "(RANK/WORLD_SIZE) or a SLURM array. Then run once without sharding to merge")
    e.set_defaults(func=run)


def check_inputs(a) -> None:
    """Every setting, before lm-eval, the tokenizer or the model loads; writes nothing."""
    require_lm_eval()
    arg.check_out_dir(a.out)
    arg.check_model_source(a.model)
    if a.include_path is not None and not Path(a.include_path).is_dir():
        raise ValueError(f"--include-path {a.include_path} is not a directory of task YAMLs")
    from ..scans.settings import check_device

    check_device(a.device)
    from ..scans.sharding import resolve_shard

    a.shard = resolve_shard(a.shard)


def load_model(a):
    """The model on ``--device`` in ``--dtype`` (float32 on the CPU by default), as ``profile``
    loads it, and its tokenizer."""
    from ..command_model import load_command_model
    from ..tokenization import load_tokenizer

    tokenizer = load_tokenizer(a.tokenizer or a.model, revision=None if a.tokenizer else a.revision,
                               what="lm-eval's requests")
    return load_command_model(a).eval(), tokenizer


def run(a) -> int:
    check_inputs(a)
    from ..scans.sharding import local_device
    from .harness import EvaluationFailed, evaluate

    a.device = local_device(a.device)
    model, tokenizer = load_model(a)
    t0 = time.time()
    out = Path(a.out)
    try:
        results = evaluate(model, a.tasks, tokenizer=tokenizer, out=out, include_path=a.include_path, limit=a.limit,
                           num_fewshot=a.num_fewshot, position_bins=a.bins, statistics=a.statistics,
                           local_window=a.local_window, plots=not a.no_plots, model_name=a.model, revision=a.revision,
                           shard=a.shard, metadata=a.metadata)
    except (EvaluationFailed, RuntimeError) as err:
        print(f"circuit-stats eval: error: {err}", file=sys.stderr)
        return 1
    if a.shard.count > 1:
        n_docs = sum(len(ids) for ids in results["documents"].values())
        print(f"shard {a.shard}: evaluated {n_docs} documents in {time.time() - t0:.1f}s; once every shard has "
              f"finished, run the same command without --shard (outside torchrun) to write the tables in {out}")
        return 0
    n_docs = sum(len({s["doc_id"] for s in v}) for v in results["samples"].values())
    print(f"evaluated {n_docs} documents of {', '.join(a.tasks)} in {time.time() - t0:.1f}s -> {out / 'results.json'}, "
          f"{out / 'samples.parquet'}, {out / 'statistics.parquet'}, {out / 'summary.md'}")
    return 0
