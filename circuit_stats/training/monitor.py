"""``Monitor``: score every head every N steps of a plain PyTorch training loop.

    monitor = Monitor(model, every=100, out="runs/tiny/circuit_stats")
    for step in range(start, total):
        monitor.step(step)          # scores when step % every == 0, before this step's update
        ...train one step...

Resuming: the first ``step()`` call of a Monitor says where training (re)starts. Rows of the
table at that step or later were written by a run that was killed after its last checkpoint:
they are dropped, and the steps are scored again from the resumed weights, so the table never
holds a step twice nor a row from the abandoned part of a run. A step already in the table is
never scored again.

Multi-process runs (``torchrun``, accelerate, DDP): only the main process (global rank 0) scores
and writes; the others return at once. The weights are identical on every rank under DDP, so one
rank's scores are the run's scores; sharded models (FSDP) are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd
import torch

from ..finite import NonFiniteError
from ..labels import HEAD_CLASSES, UNCLASSIFIED, flag_column
from ..protocols import get_protocol
from .results import LiveResults
from .scoring import check_replicated, score_live_model, unwrap_model

logger = logging.getLogger(__name__)

LOG_PREFIX = "circuit_stats"
NOT_SCORES = ("model", "revision", "step", "tokens", "protocol", "layer", "head", "label")
LogFn = Callable[[dict, int], None]


def is_main_process() -> bool:
    """Global rank 0, or not a distributed run."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def metrics(rows: pd.DataFrame, prefix: str = LOG_PREFIX) -> dict[str, float]:
    """Scalars for a training logger from one step's per-head rows.

    ``{prefix}/heads/{class}``: how many heads carry each label (every class the protocol can
    assign, zeros included); ``{prefix}/{score}/L{layer}H{head}``: every per-head score."""
    classes = [c for c in HEAD_CLASSES if flag_column(c) in rows.columns or c == UNCLASSIFIED]
    classes += sorted(set(rows["label"]) - set(classes))
    counts = rows["label"].value_counts()
    out = {f"{prefix}/heads/{c}": float(counts.get(c, 0)) for c in classes}
    skip = set(NOT_SCORES)
    for col in rows.columns:
        if col in skip or not pd.api.types.is_numeric_dtype(rows[col]) or pd.api.types.is_bool_dtype(rows[col]):
            continue
        for layer, head, value in zip(rows["layer"], rows["head"], rows[col]):
            out[f"{prefix}/{col}/L{int(layer)}H{int(head)}"] = float(value)
    return out


class Monitor:
    """Score every head of ``model`` every ``every`` steps into ``out/results.parquet``.

    Args:
        model: the model being trained (a transformers causal LM; DDP-wrapped is fine). It may
            train with any attention implementation: scoring switches it to ``circuit_stats``
            and back.
        every: score when ``global_step % every == 0`` (step 0, the initial weights, included).
        out: the run directory for ``results.parquet`` and ``monitor.json``.
        protocol: a head-scoring protocol (``repeat`` by default: cheap, needs no data;
            ``retrieval`` scores the full model, since it generates).
        model_name: the table's ``model`` column (default: ``config._name_or_path`` or the class name).
        tokens_per_step: fills the ``tokens`` column as ``step * tokens_per_step`` (else pass
            ``tokens=`` to :meth:`step`; without either the column is empty and reports use steps).
        log: called as ``log(metrics, step)`` after each scoring (e.g. ``wandb.log``-style).
        texts, tokenizer, batch_size, bos_token_id: as in :func:`circuit_stats.score_heads`.
        **options: the protocol's options (``n_sequences``, ``seq_len``, ``thresholds``, ...).
    """

    def __init__(self, model: torch.nn.Module, every: int, out: Union[str, Path], protocol: str = "repeat", *,
                 model_name: Optional[str] = None, tokens_per_step: Optional[int] = None,
                 log: Optional[LogFn] = None, texts: Optional[Sequence] = None, tokenizer=None,
                 batch_size: Optional[int] = None, bos_token_id: Optional[int] = None, **options):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int (optimizer steps between scorings), got {every!r}")
        if tokens_per_step is not None and (not isinstance(tokens_per_step, int) or tokens_per_step < 1):
            raise ValueError(f"tokens_per_step must be a positive int or None, got {tokens_per_step!r}")
        spec = get_protocol(protocol)
        resolved = spec.check_options(options)
        if not spec.takes_texts and (texts is not None or tokenizer is not None):
            raise ValueError(f"protocol {protocol!r} generates its own sequences; texts/tokenizer are not used")
        self.model = unwrap_model(model)
        check_replicated(self.model)
        self.every, self.protocol, self.log = every, protocol, log
        self.tokens_per_step = tokens_per_step
        self.score_kwargs = dict(options, batch_size=batch_size, bos_token_id=bos_token_id)
        if spec.takes_texts:
            self.score_kwargs.update(texts=texts, tokenizer=tokenizer)
        self.model_name = model_name or getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__
        self.out = Path(out)
        self._settings = dict(resolved, batch_size=batch_size, bos_token_id=bos_token_id,
                              texts=None if texts is None else f"{len(texts)} given")
        self._results: Optional[LiveResults] = None
        self._started = False

    @property
    def results(self) -> pd.DataFrame:
        """The table so far (main process; empty elsewhere)."""
        return self._table().frame if is_main_process() else pd.DataFrame()

    def _table(self) -> LiveResults:
        if self._results is None:  # opened lazily: only the main process touches the directory
            self._results = LiveResults(self.out, model=self.model_name, protocol=self.protocol,
                                        options=self._settings)
        return self._results

    def step(self, global_step: int, tokens: Optional[int] = None) -> Optional[pd.DataFrame]:
        """Score the model if ``global_step`` is on the grid and not yet in the table.

        Returns the new rows (one per layer and head), or None when nothing was scored."""
        if not isinstance(global_step, int) or isinstance(global_step, bool) or global_step < 0:
            raise ValueError(f"global_step must be a non-negative int, got {global_step!r}")
        if not is_main_process():
            return None
        table = self._table()
        if not self._started:
            self._started = True
            dropped = table.drop_from(global_step)
            if dropped:
                logger.info("%s: training restarts at step %d; dropped %d later step(s) of the previous run",
                            table.path, global_step, dropped)
        if global_step % self.every or global_step in table.steps():
            return None
        return self.score(global_step, tokens)

    def score(self, global_step: int, tokens: Optional[int] = None) -> pd.DataFrame:
        """Score now (off the grid too) and append the rows for ``global_step``. Raises
        ``NonFiniteError`` (nothing written) when a score is NaN or infinite (diverged weights)."""
        if tokens is None and self.tokens_per_step is not None:
            tokens = global_step * self.tokens_per_step
        try:
            scores = score_live_model(self.model, self.protocol, self.score_kwargs)
        except NonFiniteError as err:
            raise NonFiniteError(f"step {global_step}: {err}") from err
        rows = self._table().add(global_step, tokens, scores)
        if self.log is not None:
            self.log(metrics(rows), global_step)
        return rows
