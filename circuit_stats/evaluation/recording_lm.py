"""``RecordingHFLM``: lm-eval's Hugging Face model with per-head statistics for every request.

Each request runs alone (batch size 1, so no padding ever enters a statistic) inside
``record(position_bins=...)``. The queries pooled are every token the model reads for it:

* ``loglikelihood`` (and multiple choice, one request per choice): lm-eval's input, the context
  followed by the continuation without its last token (the logits of the context's last token
  and of those continuation tokens score the continuation);
* ``loglikelihood_rolling``: every window lm-eval feeds;
* ``generate_until``: the prompt, then each generated token fed back through the KV cache (every
  generated token but the last, which is never read).

A finished request is committed to the ``EvalDir`` with its response; a re-run returns the
committed response without running the model again. ``answered`` lists every request of this
run with lm-eval's (task, doc_id).
"""

from __future__ import annotations

from typing import Sequence

from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

from ..models import record
from ..profiling.profile import record_options, statistics_frame
from .store import EvalDir, request_key


def restore_response(request_type: str, response):
    """A response read back from JSON, in the type lm-eval expects."""
    if request_type == "loglikelihood":
        return float(response[0]), bool(response[1])
    if request_type == "loglikelihood_rolling":
        return float(response)
    return response


class RecordingHFLM(HFLM):
    """``HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)`` that records statistics.

    Args:
        model: a causal LM loaded with ``attn_implementation="circuit_stats"``.
        store: where each finished request is committed.
        edges: position-bin edges (``positions.bin_edges``); statistics: names from ``STATISTICS``.
    """

    def __init__(self, model, tokenizer, store: EvalDir, *, edges: Sequence[float], statistics: Sequence[str],
                 local_window: int, **hflm_options):
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=1, **hflm_options)
        self.store = store
        self.edges = list(edges)
        self.statistics = tuple(statistics)
        self.options = record_options(self.statistics, local_window)
        self.answered: list[dict] = []  # key, task, doc_id, request, n_tokens of every request answered

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.run_each("loglikelihood", requests, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.run_each("loglikelihood_rolling", requests, disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self.run_each("generate_until", requests, disable_tqdm)

    def run_each(self, request_type: str, requests, disable_tqdm: bool) -> list:
        """Run ``requests`` one at a time through HFLM's ``request_type``, recording each."""
        run = getattr(super(), request_type)
        responses = []
        for inst in tqdm(requests, desc=request_type, disable=disable_tqdm):
            key = request_key(inst.task_name, inst.idx, inst.args)
            done = self.store.response(key)
            if done is None:
                try:
                    done = self.run_one(run, request_type, inst, key)
                except Exception as err:
                    self.store.write_failure(key, err)
                    raise
            responses.append(restore_response(request_type, done["response"]))
            self.answered.append({"key": key, "task": inst.task_name, "doc_id": int(inst.doc_id),
                                  "request": int(inst.idx), "n_tokens": done["n_tokens"]})
        return responses

    def run_one(self, run, request_type: str, inst, key: str) -> dict:
        with record(self.model, position_bins=self.edges, **self.options) as rec:
            (response,) = run([inst], disable_tqdm=True)
        stats = statistics_frame(rec, self.statistics, f"attention statistics of request {key}")
        first_head = stats[(stats["layer"] == 0) & (stats["head"] == 0)]
        meta = {"request_type": request_type, "n_tokens": int(first_head["n_queries"].sum()), "response": response}
        self.store.write_request(key, meta, stats)
        return meta
