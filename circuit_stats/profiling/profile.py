"""``profile()``: position-resolved attention statistics of every head over a corpus.

Each document runs through the model alone (no padding), in chunks that extend the KV cache
(``prefill.chunked_prefill``), inside one ``record(position_bins=...)``; its per-(layer, head,
bin) means become rows of ``profile.parquet``. With ``out=``, every finished document is
committed atomically, so a re-run continues where a killed one stopped, and a document that
fails (also one whose statistics are NaN or infinite: ``NonFiniteError``) is recorded in
``failures.json`` and skipped, never pooled. Processes sharing ``out`` (``shard=``) lock each
document while they profile it; the one that finds every document done writes the merged outputs.
With ``key_attention``, each document also gives its per-token sink sums (``sink_tokens``), merged
into ``sink_tokens.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..finite import check_finite
from ..names import PROFILE_KEY_STATISTICS, PROFILE_STATISTICS
from ..models import offset_column, record, uses_circuit_stats
from ..models.config import text_config
from ..models.context import check_context, context_limit
from ..models.positions import BinSpec, bin_edges
from ..models.wrapped import unwrap_model
from ..sharding import Shard
from ..tokenization import encode, resolve_tokenizer
from .corpus import Document, as_documents
from .keys import add_key_columns, key_options, key_sums, records_keys
from .prefill import chunked_prefill
from ..names import SINK_EPS, SINK_MIN_QUERIES
from .sink_tokens import TABLE, document_sums, merge_sums
from .writer import ProfileDir

log = logging.getLogger(__name__)

STATISTICS = PROFILE_STATISTICS  # what record_options() turns into record()'s arguments
ROW_KEYS = ["doc_index", "doc_id", "n_tokens", "layer", "head", "bin", "pos_lo", "pos_hi", "n_queries"]


def record_options(statistics: Sequence[str], local_window: int) -> dict:
    unknown = sorted(set(statistics) - set(STATISTICS + PROFILE_KEY_STATISTICS))
    if unknown or not statistics:
        raise ValueError(f"statistics must be a non-empty subset of {STATISTICS + PROFILE_KEY_STATISTICS}, "
                         f"got unknown {unknown}")
    opts: dict = {}
    if "previous_token" in statistics:
        opts["offsets"] = (1,)
    if {"induction", "duplicate"} & set(statistics):
        opts["token_match"] = True
    if "entropy" in statistics:
        opts["entropy"] = True
    if "distance" in statistics:
        opts["distance"] = True
    if "local" in statistics:
        opts["local_window"] = local_window
    if "top1_prob" in statistics:
        opts["top1"] = True
    return opts  # the key statistics: keys.key_options


@dataclass
class DocumentProfile:
    """One document's profile: its rows, and with the key statistics its per-token sink sums."""

    rows: pd.DataFrame  # layer, head, bin, pos_lo, pos_hi, n_queries and the statistics
    sinks: Optional[pd.DataFrame] = None  # sink_tokens.document_sums


@torch.no_grad()
def profile_document(model: torch.nn.Module, ids: Sequence[int], *, edges, statistics: Sequence[str],
                     local_window: int, chunk_size: int, sink_eps: float = SINK_EPS,
                     sink_min_queries: int = SINK_MIN_QUERIES) -> DocumentProfile:
    """One document's rows (``layer, head, bin, pos_lo, pos_hi, n_queries`` and the statistics) and,
    with ``key_attention``, its sink sums (``sink_tokens.document_sums`` at ``sink_eps`` and
    ``sink_min_queries``). Raises ``NonFiniteError`` when a statistic is NaN or infinite (the
    document then fails)."""
    device = next(model.parameters()).device
    input_ids = torch.as_tensor([list(ids)], dtype=torch.long, device=device)
    opts = dict(record_options(statistics, local_window), **key_options(statistics))
    with record(model, position_bins=list(edges), **opts) as rec:
        chunked_prefill(model, input_ids, chunk_size)
    rows = statistics_frame(rec, statistics, "attention statistics of this document")
    if not records_keys(statistics):
        return DocumentProfile(rows)
    return DocumentProfile(rows, document_sums(rec.tensors()["key_attention"], ids, sink_eps, sink_min_queries))


def statistics_frame(rec, statistics: Sequence[str], what: str) -> pd.DataFrame:
    """A finished ``record(position_bins=..., **record_options(...))``'s rows: ``layer, head, bin,
    pos_lo, pos_hi, n_queries`` and ``statistics``; ``NonFiniteError`` naming ``what`` when a
    statistic is NaN or infinite."""
    df = add_key_columns(rec.summary().rename(columns={offset_column(1): "previous_token"}), rec)
    df = df[["layer", "head", "bin", "pos_lo", "pos_hi", "n_queries", *statistics, *key_sums(statistics)]]
    check_finite(df, statistics, what)
    return df


def corpus_fingerprint(docs: Sequence[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.doc_id.encode())
        h.update(json.dumps(d.text).encode() if not isinstance(d.text, str) else d.text.encode())
        h.update(b"\0")
    return h.hexdigest()


def profile(
    model: torch.nn.Module,
    texts: Union[str, Path, Iterable],
    *,
    tokenizer=None,
    out: Union[str, Path, None] = None,
    position_bins: BinSpec = "log2",
    statistics: Sequence[str] = STATISTICS,
    local_window: int = 16,
    chunk_size: int = 1024,
    max_tokens: Optional[int] = None,
    add_special_tokens: bool = True,
    plots: bool = True,
    progress: bool = True,
    model_name: Optional[str] = None,
    revision: Optional[str] = None,
    shard: Shard = Shard(),
    sink_eps: float = SINK_EPS,
    sink_min_queries: int = SINK_MIN_QUERIES,
) -> pd.DataFrame:
    """Attention statistics of every head against query position over a corpus.

    Args:
        model: a transformers causal LM using ``attn_implementation="circuit_stats"``, or an nnsight
            ``LanguageModel`` wrapping one.
        texts: a path (.txt / .jsonl / .parquet / directory / ``hf:NAME``, see
            ``corpus.read_corpus``), a ``datasets.Dataset``, or a list of strings or token-id lists.
        tokenizer: a tokenizer for string texts, or ``"bytes"`` (UTF-8 bytes as ids) explicitly.
        out: output directory (resumable): ``profile.parquet``, ``summary.md``, ``plots/``,
            ``failures.json`` (and ``sink_tokens.parquet`` with ``key_attention``). Without it
            nothing is written and failures raise.
        position_bins: ``"log2"`` or explicit edges (see ``record``).
        statistics: any of ``STATISTICS``; ``local`` is the mass on the last ``local_window`` keys.
        chunk_size: tokens per forward (chunked prefill through the KV cache): bounds activation
            memory, not the result.
        max_tokens: truncate documents to this many tokens (default: the model's context,
            ``max_position_embeddings``). More than a learned position table holds (GPT-2, OPT)
            is refused; more than a rotary model was trained on gives a warning.
        add_special_tokens: passed to a transformers tokenizer (e.g. to prepend its BOS).
        shard: profile only documents ``I, I+N, ...`` of shard ``I/N`` (``circuit_stats.sharding``; needs
            ``out``). Processes sharing ``out`` lock each document while they profile it, and the
            process that finds every document done (or failed) writes the merged outputs.
        sink_eps, sink_min_queries: with ``key_attention``, the per-token sink table's threshold
            on ``alpha_k`` and the queries a key needs at or after it to count (the sink
            protocol's ``eps`` and ``min_queries``, same defaults; see ``sink_tokens``).

    Returns:
        One row per (document, layer, head, position bin holding a query): ``doc_index``,
        ``doc_id``, ``n_tokens``, ``layer``, ``head``, ``bin``, ``pos_lo``, ``pos_hi`` (-1: open),
        ``n_queries`` and one column per statistic (means over the bin's queries). When documents
        are left to other processes (other shards still running), only this shard's rows. With
        ``key_attention`` and no ``out``, ``df.attrs["sink_tokens"]`` holds the sink table's
        records (with ``out``: ``sink_tokens.parquet``).
    """
    model = unwrap_model(model)  # an nnsight LanguageModel: the transformers model it wraps
    if not uses_circuit_stats(model):
        raise ValueError("profile needs a model loaded with attn_implementation='circuit_stats' "
                         "(or switched with model.set_attn_implementation('circuit_stats'))")
    edges = bin_edges(position_bins)
    statistics = tuple(statistics)
    check_arguments(statistics, local_window, chunk_size, max_tokens, shard, out)
    check_sink_arguments(sink_eps, sink_min_queries)
    limit = context_limit(model) if max_tokens is None else max_tokens
    if max_tokens is not None:  # past a learned position table: refused; past a rotary model's context: a warning
        check_context(model, max_tokens, f"max_tokens={max_tokens}")
    docs = as_documents(texts)
    if not docs:
        raise ValueError("texts: no documents")
    tok = resolve_tokenizer(tokenizer) if any(isinstance(d.text, str) for d in docs) else None
    settings = dict(
        model=model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        revision=revision, statistics=list(statistics), position_bins=[e if e != float("inf") else "inf" for e in edges],
        local_window=local_window, max_tokens=limit, add_special_tokens=add_special_tokens,
        tokenizer=getattr(tok, "name_or_path", None) or getattr(tok, "name", None) or (type(tok).__name__ if tok else None),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        corpus=corpus_fingerprint(docs), n_documents=len(docs),
    )
    keys = records_keys(statistics)
    sink_options = dict(sink_eps=float(sink_eps), sink_min_queries=sink_min_queries) if keys else {}
    settings.update(sink_options)  # only with key_attention: older profiles without it still resume
    run = DocumentRun(model, tok, edges=edges, statistics=statistics, local_window=local_window,
                      chunk_size=chunk_size, limit=limit, add_special_tokens=add_special_tokens, **sink_options)
    if out is None:
        bar = tqdm(docs, desc="profile", unit="doc", disable=not progress)
        done = [run.profile(i, doc) for i, doc in enumerate(bar)]
        result = pd.concat([d.rows for d in done], ignore_index=True)
        if keys:
            result.attrs["sink_tokens"] = merge_sums([d.sinks for d in done], tok).to_dict("records")
        return result
    store = ProfileDir(out, shard)
    done = store.start(settings)
    mine = shard.take(range(len(docs)))
    t0 = time.time()
    profile_into(store, run, docs, [i for i in mine if i not in done], progress=progress,
                 desc="profile" + (f" [shard {shard}]" if shard.count > 1 else ""))
    store.add_elapsed(time.time() - t0)
    if not store.complete(len(docs)):  # other processes still hold documents: the last one to finish merges
        return store.rows(mine)
    with store.lock("merge"):
        return write_merged(store, settings, tok, plots=plots, sinks=keys)


def write_merged(store: ProfileDir, settings: dict, tokenizer, *, plots: bool, sinks: bool) -> pd.DataFrame:
    """Merge a complete profile directory: ``profile.parquet``, ``failures.json``, with ``sinks``
    ``sink_tokens.parquet``, the plots and ``summary.md``; returns the rows. Call under the
    store's ``lock("merge")``."""
    result, failures = store.merge()
    table = merge_sums(store.sink_parts(), tokenizer) if sinks else None
    if table is not None:
        store.write_table(TABLE, table)
    from .report import write_plots, write_summary

    if plots:
        write_plots(result, store.root / "plots")
    write_summary(result, store.root, settings, failures, store.elapsed(), sinks=table)
    return result


def check_arguments(statistics: Sequence[str], local_window: int, chunk_size: int, max_tokens: Optional[int],
                    shard: Shard, out) -> None:
    """``ValueError`` naming the bad argument of ``profile``, before any work."""
    record_options(statistics, local_window)
    if isinstance(local_window, bool) or not isinstance(local_window, int) or local_window < 1:
        raise ValueError(f"local_window must be an int >= 1, got {local_window!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if not isinstance(shard, Shard):
        raise ValueError(f"shard must be a circuit_stats.sharding.Shard, got {shard!r}")
    if shard.count > 1 and out is None:
        raise ValueError(f"shard {shard} needs out= (the directory the shards share)")


def check_sink_arguments(sink_eps: float, sink_min_queries: int) -> None:
    """``ValueError`` naming a bad setting of the per-token sink table."""
    if isinstance(sink_eps, bool) or not isinstance(sink_eps, (int, float)) or not 0 < sink_eps < 1:
        raise ValueError(f"sink_eps must be a number in (0, 1) (a threshold on alpha_k), got {sink_eps!r}")
    if isinstance(sink_min_queries, bool) or not isinstance(sink_min_queries, int) or sink_min_queries < 1:
        raise ValueError(f"sink_min_queries must be an int >= 1, got {sink_min_queries!r}")


class DocumentRun:
    """One document's rows: its ids checked against the vocabulary, cut at ``limit``, profiled."""

    def __init__(self, model, tokenizer, *, edges, statistics, local_window, chunk_size, limit, add_special_tokens,
                 **sink_options):
        self.model, self.tokenizer, self.limit, self.add_special_tokens = model, tokenizer, limit, add_special_tokens
        self.options = dict(edges=edges, statistics=statistics, local_window=local_window, chunk_size=chunk_size,
                            **sink_options)
        self.vocab = int(text_config(model.config).vocab_size)

    def profile(self, doc_index: int, doc: Document) -> DocumentProfile:
        """``profile()``'s rows of ``doc`` (and its sink sums); raises what made it fail."""
        ids = encode(self.tokenizer, doc.text, self.add_special_tokens)
        if not ids:
            raise ValueError("empty document (no tokens)")
        bad = next((i for i in ids if not 0 <= i < self.vocab), None)
        if bad is not None:  # the offending id, not the largest
            raise ValueError(f"token id {bad} (position {ids.index(bad)}) does not fit the model's "
                             f"vocabulary of {self.vocab} (ids 0..{self.vocab - 1})")
        n_doc = len(ids)
        ids = ids[:self.limit] if self.limit else ids
        was_training = self.model.training
        self.model.eval()
        try:
            result = profile_document(self.model, ids, **self.options)
        finally:
            self.model.train(was_training)
        df = result.rows
        df.insert(0, "doc_index", doc_index)
        df.insert(1, "doc_id", doc.doc_id)
        df.insert(2, "n_tokens", len(ids))
        df.insert(3, "doc_tokens", n_doc)
        return result


def profile_into(store: ProfileDir, run: DocumentRun, docs: Sequence[Document], todo: Sequence[int], *,
                 progress: bool, desc: str) -> None:
    """Profile documents ``todo`` one by one, each under its lock, committing each part; a failing
    document is recorded in the store's failures file and skipped. Documents another process
    holds are left to it."""
    failures = store.failures()
    for i in tqdm(todo, desc=desc, unit="doc", disable=not progress):
        with store.claim(i) as mine:
            if not mine:
                log.info("document %d is profiled by another process or done", i)
                continue
            try:
                result = run.profile(i, docs[i])
            except Exception as err:  # noqa: BLE001 -- a failing document is recorded and skipped
                log.warning("document %d (%s) failed: %s", i, docs[i].doc_id, err)
                failures[i] = {"doc_index": i, "doc_id": docs[i].doc_id, "error": f"{type(err).__name__}: {err}"}
                store.write_failures(failures)
                continue
            store.write_part(i, result.rows, result.sinks)
            log.info("document %d (%s) profiled: %d tokens", i, docs[i].doc_id, int(result.rows["n_tokens"].iloc[0]))
        if failures.pop(i, None) is not None:
            store.write_failures(failures)
