"""``CircuitStatsCallback``: watch attention heads form during a transformers ``Trainer`` run.

    trainer = Trainer(model=model, args=args, train_dataset=train)
    CircuitStatsCallback(every=200).attach(trainer)
    trainer.train()

Every ``every`` optimizer steps (and at step 0) every head is scored (see
:mod:`circuit_stats.training.scoring`: no grad, eval mode, ``circuit_stats`` attention, restored
afterwards, RNG streams untouched) and

* the rows go to ``<output_dir>/circuit_stats/results.parquet`` (or ``out=``), the checkpoint-scan
  format: ``circuit-stats report <output_dir>/circuit_stats`` works on a live run;
* per-class head counts and per-head scores go through ``Trainer.log`` to every integration the
  run reports to (TensorBoard, Weights & Biases, ...) and to ``trainer.state.log_history``.
  ``TrainerCallback`` events do not receive the trainer, hence ``attach(trainer)``; a callback
  passed with ``Trainer(callbacks=[...])`` must be attached too, or made with ``log=False``.

Scoring happens in ``on_step_end``, before the Trainer saves a checkpoint of the same step, so
the row of step N comes from the weights of ``checkpoint-N``.

Resuming (``trainer.train(resume_from_checkpoint=...)``): rows at the resumed step and later
are dropped (they belong to the killed run's steps after its last checkpoint) and scored again as
training reaches them; earlier rows are kept. Multi-GPU (``torchrun``, accelerate): only the
world process zero scores and writes; the other ranks skip the scoring and wait for it at their
next collective operation (DDP replicas hold the same weights). FSDP and DeepSpeed ZeRO-3 are
refused at train start: no single process holds the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from transformers import TrainerCallback

from ..protocols import get_protocol
from .monitor import Monitor, metrics

DEFAULT_EVERY = 500
OUT_SUBDIR = "circuit_stats"


class CircuitStatsCallback(TrainerCallback):
    """Score every head every ``every`` optimizer steps of a ``Trainer`` run.

    Args:
        every: optimizer steps between scorings (default 500, the Trainer's default
            ``save_steps``; see bench/bench_training.py for the overhead).
        protocol: ``repeat`` (default), ``natural``, ``sink``, ``xu2026`` or ``retrieval``.
        out: the table's directory (default ``<args.output_dir>/circuit_stats``).
        log: send counts and per-head scores through ``Trainer.log`` (needs :meth:`attach`).
        log_heads: include the per-head scores in the logs (counts are always logged).
        model_name, tokens_per_step, texts, tokenizer, batch_size, bos_token_id, **options: as
            for :class:`circuit_stats.training.Monitor`. ``tokens`` comes from
            ``state.num_input_tokens_seen`` when the Trainer counts tokens
            (``include_num_input_tokens_seen``), else from ``tokens_per_step``.
    """

    def __init__(self, every: int = DEFAULT_EVERY, protocol: str = "repeat", *,
                 out: Optional[Union[str, Path]] = None, log: bool = True, log_heads: bool = True,
                 **monitor_options):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int (optimizer steps between scorings), got {every!r}")
        self.every, self.protocol, self.out = every, protocol, out
        self.log, self.log_heads = log, log_heads
        self.monitor_options = monitor_options
        self.trainer = None
        self.monitor: Optional[Monitor] = None
        # Validate the protocol and its options now, before any training (no model needed; the
        # Monitor repeats the check when training starts).
        scoring_keys = {"model_name", "tokens_per_step", "texts", "tokenizer", "batch_size", "bos_token_id"}
        get_protocol(protocol).check_options({k: v for k, v in monitor_options.items() if k not in scoring_keys})

    def attach(self, trainer) -> "CircuitStatsCallback":
        """Add this callback to ``trainer`` (if not already there) and log through ``trainer.log``."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    # -- Trainer events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.log and self.trainer is None:
            raise RuntimeError("CircuitStatsCallback logs through the Trainer: call "
                               "CircuitStatsCallback(...).attach(trainer) before train(), or pass log=False")
        self._check_supported(args)
        if not state.is_world_process_zero:
            return
        out = Path(self.out) if self.out is not None else Path(args.output_dir) / OUT_SUBDIR
        self.monitor = Monitor(model, self.every, out, self.protocol, **self.monitor_options)
        # The first step() call is where training (re)starts: later rows are dropped.
        self._step(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is not None and state.is_world_process_zero:
            self._step(args, state)

    # -- helpers
    def _step(self, args, state) -> None:
        rows = self.monitor.step(int(state.global_step), tokens=self._tokens(args, state))
        if rows is not None and self.log:
            logs = metrics(rows)
            if not self.log_heads:
                logs = {k: v for k, v in logs.items() if "/heads/" in k}
            self.trainer.log(logs)

    @staticmethod
    def _tokens(args, state) -> Optional[int]:
        counting = getattr(args, "include_num_input_tokens_seen", False) not in (False, None, "no")
        return int(state.num_input_tokens_seen) if counting else None

    @staticmethod
    def _check_supported(args) -> None:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        if getattr(args, "fsdp", None) or is_deepspeed_zero3_enabled():
            raise NotImplementedError("CircuitStatsCallback needs the full weights on the main process: "
                                      "FSDP and DeepSpeed ZeRO-3 are not supported (DDP is)")
