"""``record()``: collect per-(layer, head) attention statistics from a Hugging Face model.

While a recording is active, every attention layer of the model computes the requested
statistics in its fused forward and hands them here, where they are reduced on the layer's
own device to sums over the selected queries. Nothing of size ``Nq`` (let alone ``Nq x Nk``)
outlives a layer call, so memory is O(layers x heads x batch).

A forward that starts fresh (no cache, or an empty one) starts new sequences; a forward that
extends a KV cache (``generate()``, chunked prefill) continues the current ones: its token ids are
appended to theirs, its per-sample sums go to the same rows and its query positions continue.

With ``position_bins`` every sum is also split by the bin of the query's position (counted from
the first real token of its sequence, see ``positions.py``), so memory is O(layers x heads x
bins), times the batch with ``per_sample``.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import pandas as pd
import torch

from ..kernels import AttentionStats, SideInputs
from ..kernels.names import CHANNELS, SCALAR_STATISTICS
from ..kernels.request import StatsRequest
from .families import attention_interface_refusal
from .key_mass import KEY_ATTENTION, KEY_MASS, KEY_STATISTICS, ForwardKeys, KeyMassSums, fit
from .key_ranking import check_top_n, common_tokens, top_keys_frame
from .positions import BinSpec, bin_bounds, bin_weights, query_positions
from .record_options import RecordOptions, kernel_arguments
from .wrapped import unwrap_model

# The name registered with transformers' AttentionInterface / AttentionMaskInterface.
IMPLEMENTATION = "circuit_stats"
# The statistic groups a query mask can be given for: the averaged channels and the key mass.
MASK_GROUPS = CHANNELS + tuple(name for name in (KEY_MASS,) if name not in CHANNELS)


def offset_column(offset: int) -> str:
    """The result column of the fixed offset ``offset`` (``offset_1`` = previous token)."""
    return f"offset_{offset}"


def probe_column(index: int) -> str:
    """The result column of the ``index``-th probe key."""
    return f"probe_{index}"


_ACTIVE: Optional["Recording"] = None


def uses_circuit_stats(model: torch.nn.Module) -> bool:
    """Whether every attention layer of ``model`` dispatches to ``attn_implementation=\"circuit_stats\"``."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if isinstance(impl, dict):
        return bool(impl) and all(v == IMPLEMENTATION for v in impl.values())
    return impl == IMPLEMENTATION


# The keyword under which a model's forward receives the KV cache: transformers < 5.24 calls it
# ``past_key_values``; 5.24 renamed it ``cache`` (the old name is deprecated, still accepted).
CACHE_KEYWORDS = ("cache", "past_key_values")


def _cache_argument(kwargs: dict):
    """The KV cache passed to a model's forward, under whichever keyword transformers used."""
    for name in CACHE_KEYWORDS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


@dataclass
class _Block:
    """Per-sample sums for one batch of sequences: ``{layer: {name: [B, H, K, C]}}`` (K bins)."""

    sums: dict = field(default_factory=lambda: defaultdict(dict))
    counts: dict = field(default_factory=lambda: defaultdict(dict))  # layer -> name -> [B, K]


@dataclass
class _ForwardInputs:
    """What every layer of one forward on one device shares, built and validated once."""

    weights: dict  # statistic -> [B, Nq, K] float64 query weights (K position bins)
    side: SideInputs
    keys: Optional[ForwardKeys] = None  # the key layout, with key_mass


class _LayerCall:
    """One attention call inside the recording: its layer (and sliding window), the recording's
    request and the forward's shared inputs."""

    def __init__(self, rec: "Recording", layer: int, window: Optional[int], request: StatsRequest,
                 shared: _ForwardInputs):
        self.rec, self.layer, self.window, self.request, self.shared = rec, layer, window, request, shared
        self.side = shared.side

    @property
    def kernel_kwargs(self) -> dict:
        """``attention_with_stats`` keyword arguments of the recorded statistics (the layer adds
        its scale and score modifiers)."""
        return kernel_arguments(self.request, self.side)

    def deliver(self, stats: AttentionStats) -> None:
        self.rec._reduce(self.layer, stats, self.shared.weights)
        if self.shared.keys is not None:
            self.rec._keys.add(self.layer, stats.key_mass, self.shared.keys, self.window)


class Recording:
    """Accumulates statistic sums per (layer, head); see ``record()``."""

    def __init__(self, model, options: RecordOptions, *, token_ids: Optional[torch.Tensor] = None, query_mask=None,
                 probe_keys: Optional[torch.Tensor] = None, span: Optional[torch.Tensor] = None):
        self.model = model
        self.options = options
        self.offsets = options.offsets
        self.token_match = options.token_match
        self.entropy = options.entropy
        self.per_sample_enabled = options.per_sample
        self.edges = options.position_bins
        self.request = options.stats_request()  # the same statistics in every forward
        self.set_inputs(query_mask=query_mask, probe_keys=probe_keys, token_ids=token_ids, span=span)
        self._module_ids = {id(m) for m in model.modules()}
        self._tokens: Optional[torch.Tensor] = None  # ids of all keys of the current sequences
        self._sums: dict = defaultdict(dict)  # layer -> name -> [H, K, C]
        self._counts: dict = defaultdict(dict)  # layer -> name -> [K] selected queries per bin
        self._last_top1: dict = {}  # layer -> [B, H] top1 key of the last query of the last forward
        self._blocks: list[_Block] = []
        self._n_forward = 0
        self._seq_len: Optional[int] = None  # positions of the current sequences so far (None: unknown)
        # State before the forward now running (None: none running): a forward that raises leaves
        # some layers' contributions; they are rolled back (see _discard_failed_forward).
        self._before_running: Optional[tuple] = None
        # (forward number, device, q_len, k_len) -> (query weights, side inputs): every layer of
        # one forward on one device shares them, built and validated once.
        self._forward_inputs: dict = {}
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.n_layers = int(text_config.num_hidden_layers)
        self._keys = KeyMassSums(self.n_layers, options.key_bins, options.per_sample) if options.key_mass else None
        self._hook = model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        self._done_hook = model.register_forward_hook(self._after_forward)

    def set_inputs(self, *, query_mask=None, probe_keys: Optional[torch.Tensor] = None,
                   token_ids: Optional[torch.Tensor] = None, span: Optional[torch.Tensor] = None) -> None:
        """Replace the per-forward inputs (query mask, probe keys, token ids, span) for the
        forwards that follow, e.g. between batches of different sizes; sums keep accumulating."""
        self._query_masks = _normalise_query_mask(query_mask)
        if KEY_MASS in self._query_masks and not self.options.key_mass:
            raise ValueError("query_mask['key_mass'] selects the queries of the key mass: record(..., key_mass=True) "
                             "is needed for it")
        self._probe_keys = probe_keys
        self._span = _check_span(span)
        self._user_tokens = token_ids
        if token_ids is not None:
            self.token_match = True

    # ---------------------------------------------------------------- forward hooks
    def _before_forward(self, module, args, kwargs):
        self._discard_failed_forward()
        self._before_running = self._state()
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point():
            ids = args[0]
        past = _cache_argument(kwargs)
        continuing = past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0
        new = ids if ids is not None else kwargs.get("inputs_embeds")
        self._seq_len = None if new is None else (past.get_seq_length() if continuing else 0) + new.shape[1]
        if continuing and self._tokens is not None and ids is not None:
            self._tokens = torch.cat([self._tokens, ids.to(self._tokens.device)], dim=1)
        else:
            self._tokens = ids
        if not continuing or not self._blocks:
            self._blocks.append(_Block())
            if self._keys is not None:
                self._keys.start_sequences()
        self._n_forward += 1

    def _after_forward(self, module, args, output):
        self._before_running = None  # the forward finished: its contributions stand

    def _state(self) -> tuple:
        """What a forward changes (sums are replaced, never updated in place: shallow copies do)."""
        last = self._blocks[-1] if self._blocks else None
        block = None if last is None else (last, _copy2(last.sums), _copy2(last.counts))
        keys = None if self._keys is None else self._keys.snapshot()
        return (self._tokens, self._seq_len, _copy2(self._sums), _copy2(self._counts), dict(self._last_top1),
                len(self._blocks), block, keys)

    def _discard_failed_forward(self) -> None:
        """Roll back a forward that raised (caught inside the block), so that every layer keeps
        the same queries: the recording holds the forwards that finished."""
        if self._before_running is None:
            return
        self._tokens, self._seq_len, sums, counts, self._last_top1, n_blocks, block, keys = self._before_running
        if keys is not None:
            self._keys.restore(keys)
        self._sums, self._counts = defaultdict(dict, sums), defaultdict(dict, counts)
        del self._blocks[n_blocks:]
        if block is not None:  # the block the forward added to (a continuing forward's)
            last, block_sums, block_counts = block
            last.sums, last.counts = defaultdict(dict, block_sums), defaultdict(dict, block_counts)
        self._before_running = None
        warnings.warn("a forward inside record() raised before it finished: the statistics it had recorded "
                      "were discarded; the recording holds the forwards that finished", stacklevel=3)

    def _layer_call(self, module, query, key, kpm, window: Optional[int]) -> _LayerCall:
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise RuntimeError(f"{type(module).__name__} has no layer_idx; circuit_stats cannot tell its layer")
        B, _, Nq, _ = query.shape
        Nk = key.shape[2]
        dev = query.device
        cache_key = (self._n_forward, dev, Nq, Nk)
        shared = self._forward_inputs.get(cache_key)
        if shared is None:
            if next(iter(self._forward_inputs), (None,))[0] != self._n_forward:
                self._forward_inputs = {}  # a new forward: drop the previous one's
            shared = self._forward_inputs[cache_key] = self._shared_inputs(B, Nq, Nk, dev, kpm)
        return _LayerCall(self, int(layer), window, self.request, shared)

    def _shared_inputs(self, B: int, Nq: int, Nk: int, dev: torch.device, kpm) -> _ForwardInputs:
        """Query weights and side inputs for every layer of this forward on ``dev``."""
        if self.edges is None:
            bins = torch.ones(B, Nq, 1, dtype=torch.float64, device=dev)
        else:
            bins = bin_weights(query_positions(kpm, B, Nq, Nk, dev), self.edges)  # [B, Nq, K]
        if kpm is not None:
            default = kpm[:, Nk - Nq:].to(torch.float64)  # every non-padded query
        else:
            default = torch.ones(B, Nq, dtype=torch.float64, device=dev)
        masks = {name: default for name in MASK_GROUPS}
        for name, qm in self._query_masks.items():
            if tuple(qm.shape) != (B, Nq):
                raise ValueError(f"query_mask must have shape (batch, q_len) = {(B, Nq)} for this forward, got {tuple(qm.shape)}")
            for channel in (MASK_GROUPS if name == "default" else (name,)):
                if name == "default" and channel in self._query_masks:
                    continue  # a statistic's own mask wins over the default
                masks[channel] = qm.to(device=dev, dtype=torch.float64)
        key_weight = masks.pop(KEY_MASS, default)
        by_mask: dict = {}  # channels sharing a mask share one [B, Nq, K] weight tensor
        weights = {name: by_mask.setdefault(id(m), m[..., None] * bins) for name, m in masks.items()}
        tokens = None
        if self.token_match:
            tokens = self._user_tokens if self._user_tokens is not None else self._tokens
            if tokens is None:
                raise ValueError("token-match statistics need token ids: pass token_ids= to record() "
                                 "(the forward was called without input_ids)")
            if self._user_tokens is not None:  # one id per position so far (keys: the last Nk of them)
                n = self._seq_len if self._seq_len is not None and self._seq_len >= Nk else Nk
                if tuple(tokens.shape) != (B, n):
                    raise ValueError(f"token_ids must hold one id per position of the sequences so far: "
                                     f"need shape ({B}, {n}), got {tuple(tokens.shape)}")
            elif tokens.shape[0] != B or tokens.shape[1] < Nk:
                raise ValueError(f"token_ids must cover every key: need shape ({B}, {Nk}), got {tuple(tokens.shape)}")
            tokens = tokens[:, tokens.shape[1] - Nk:]
        if self._keys is None:
            side = SideInputs.build(batch=B, k_len=Nk, device=dev, key_padding_mask=kpm, token_ids=tokens,
                                    probe_keys=self._probe_keys, span=self._span)
            return _ForwardInputs(weights, side)
        side = SideInputs.build(batch=B, k_len=Nk, device=dev, key_padding_mask=kpm, token_ids=tokens,
                                probe_keys=self._probe_keys, span=self._span, query_weight=key_weight.float())
        ids = self._user_tokens if self._user_tokens is not None else self._tokens
        return _ForwardInputs(weights, side, self._keys.forward_keys(kpm, ids, key_weight, B, Nq, Nk, dev))

    # ---------------------------------------------------------------- reduction
    def _channels(self, stats: AttentionStats) -> Iterator[tuple[str, torch.Tensor]]:
        """(column name, [B, H, Nq, C] tensor) for every recorded statistic."""
        yield "sink", stats.sink[..., None]
        if stats.offsets is not None:
            yield "offsets", stats.offsets
        if stats.probes is not None:
            yield "probes", stats.probes
        for name in SCALAR_STATISTICS:
            val = getattr(stats, name, None)
            if val is not None:
                yield name, val[..., None]

    def _reduce(self, layer: int, stats: AttentionStats, weights: dict) -> None:
        block = self._blocks[-1]
        top1 = getattr(stats, "top1_index", None)
        if top1 is not None:
            self._last_top1[layer] = top1[:, :, -1]
        tot, cnt = self._sums[layer], self._counts[layer]
        bs, bc = block.sums[layer], block.counts[layer]
        for w, channels in _by_weight(self._channels(stats), weights):
            # One reduction for every channel that shares a query weight [B, Nq, K] (float64).
            joined = torch.cat([t for _, t in channels], -1) if len(channels) > 1 else channels[0][1]
            per_seq = torch.einsum("bhqc,bqk->bhkc", joined.to(torch.float64), w)  # [B, H, K, sum of C]
            pooled, n = per_seq.sum(0), w.sum(1)  # [H, K, sum of C], [B, K]
            n_pooled = n.sum(0)
            start = 0
            for name, t in channels:
                cols = slice(start, start + t.shape[-1])
                start = cols.stop
                tot[name] = tot[name] + pooled[..., cols] if name in tot else pooled[..., cols]
                cnt[name] = cnt[name] + n_pooled if name in cnt else n_pooled
                if self.per_sample_enabled:
                    bs[name] = bs[name] + per_seq[..., cols] if name in bs else per_seq[..., cols]
                    bc[name] = bc[name] + n if name in bc else n

    # ---------------------------------------------------------------- results
    def _columns(self, name: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
        if name == "offsets":
            return {offset_column(o): t[..., i] for i, o in enumerate(self.offsets)}
        if name == "probes":
            return {probe_column(i): t[..., i] for i in range(t.shape[-1])}
        return {name: t[..., 0]}

    def _check_complete(self) -> None:
        self._discard_failed_forward()
        if self._n_forward == 0 or not self._counts:
            raise RuntimeError("no forward pass of the model was recorded inside this record() block")
        missing = sorted(set(range(self.n_layers)) - set(self._counts))
        if missing:
            raise RuntimeError(f"layers {missing} produced no statistics (did the forward run every layer?)")
        empty = sorted({name for c in self._counts.values() for name, n in c.items() if float(n.sum()) == 0})
        if empty:
            where = " in any position bin" if self.edges is not None else ""
            raise RuntimeError(f"query_mask selected no query for {empty}{where}: the means are undefined")

    def _finish(self, t: torch.Tensor) -> torch.Tensor:
        """Drop the bin axis (dim -2 of a mean) when no position bins were asked for."""
        return t[..., 0, :] if self.edges is None else t

    @property
    def bins(self) -> Optional[list[tuple[int, Optional[int]]]]:
        """``[(lo, hi), ...]`` query-position range of every bin (``hi`` None: open), or None."""
        return None if self.edges is None else bin_bounds(self.edges)

    def query_counts(self) -> dict[str, torch.Tensor]:
        """``{channel: Tensor[K]}`` number of (row, query) pairs averaged per position bin (K = 1
        without bins); the same for every layer."""
        self._check_complete()
        return {name: n.cpu() for name, n in self._counts[0].items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """``{statistic: Tensor[n_layers, n_heads]}``: means over the selected queries and rows;
        ``[n_layers, n_heads, n_bins]`` with ``position_bins`` (NaN in a bin with no query).

        With ``key_mass``: ``key_mass`` and ``key_attention`` ``[n_layers, n_heads, keys]`` (or
        ``key_bins`` bins), see ``record()``."""
        self._check_complete()
        out: dict[str, list] = defaultdict(list)
        for layer in range(self.n_layers):
            for name, s in self._sums[layer].items():
                n = self._counts[layer][name][:, None]  # [K, 1]
                mean = self._finish((s / n).to(torch.float32).cpu())  # [H, (K,) C]
                for col, val in self._columns(name, mean).items():
                    out[col].append(val)
        keys = {} if self._keys is None else self._keys.pooled()
        return {**{col: torch.stack(vals) for col, vals in out.items()}, **keys}

    def last_top1_index(self) -> torch.Tensor:
        """``[B, n_layers, n_heads]`` int64: the top-1 key (absolute position) of the last query
        of the most recent forward, per row, layer and head (needs ``top1=True``)."""
        self._discard_failed_forward()
        if not self._last_top1:
            raise RuntimeError("record(..., top1=True) and at least one forward are needed for last_top1_index()")
        return torch.stack([self._last_top1[layer] for layer in range(self.n_layers)], dim=1)

    def _check_per_sample(self) -> None:
        if not self.per_sample_enabled:
            raise RuntimeError("record(..., per_sample=True) is needed for per-sample statistics")
        self._check_complete()

    def per_sample(self) -> dict[str, torch.Tensor]:
        """``{statistic: Tensor[n_sequences, n_layers, n_heads]}`` (needs ``per_sample=True``);
        ``[n_sequences, n_layers, n_heads, n_bins]`` with ``position_bins``.

        Sequences are the batch rows of every fresh forward, in order; a sequence (or bin) none of
        whose queries was selected holds NaN. With ``key_mass``: ``key_mass`` and ``key_attention``
        ``[n_sequences, n_layers, n_heads, keys]`` (NaN at the keys a sequence does not have)."""
        self._check_per_sample()
        out: dict[str, list] = defaultdict(list)
        for block in self._blocks:
            if not block.counts:
                continue
            per_layer: dict[str, list] = defaultdict(list)
            for layer in range(self.n_layers):
                for name, s in block.sums[layer].items():
                    cnt = block.counts[layer][name].cpu()[:, None, :, None]  # [B, 1, K, 1]
                    mean = self._finish((s.cpu() / cnt).to(torch.float32))
                    for col, val in self._columns(name, mean).items():
                        per_layer[col].append(val)
            for col, vals in per_layer.items():
                out[col].append(torch.stack(vals, dim=1))  # [B, L, H]
        keys = {} if self._keys is None else self._keys.per_sequence()
        return {**{col: torch.cat(vals) for col, vals in out.items()}, **keys}

    def per_sample_counts(self) -> dict[str, torch.Tensor]:
        """``{statistic: Tensor[n_sequences]}`` (``[n_sequences, n_bins]`` with ``position_bins``):
        how many queries each per-sample mean of :meth:`per_sample` averages (the same for every
        layer); weights for pooled means and their standard errors."""
        self._check_per_sample()
        out: dict[str, list] = defaultdict(list)
        for block in self._blocks:
            for name, s in block.sums[0].items() if block.counts else ():
                n = block.counts[0][name].cpu().to(torch.float64)  # [B, K]
                for col in self._columns(name, s):
                    out[col].append(n[:, 0] if self.edges is None else n)
        return {col: torch.cat(vals) for col, vals in out.items()}

    def summary(self) -> pd.DataFrame:
        """One row per (layer, head): ``layer``, ``head`` and one column per statistic.

        With ``position_bins``: one row per (layer, head, bin) that holds a query, with ``bin``,
        ``pos_lo``, ``pos_hi`` (``pos_hi`` -1 for an open last bin) and ``n_queries`` (the
        ``sink`` count) before the statistics. The per-key statistics are not in it (``top_keys``)."""
        t = {col: val for col, val in self.tensors().items() if col not in KEY_STATISTICS}
        n_layers, n_heads = next(iter(t.values())).shape[:2]
        if self.edges is None:
            df = pd.DataFrame({
                "layer": torch.arange(n_layers).repeat_interleave(n_heads).numpy(),
                "head": torch.arange(n_heads).repeat(n_layers).numpy(),
            })
            for col, val in t.items():
                df[col] = val.reshape(-1).numpy()
            return df
        K = len(self.edges) - 1
        counts = self.query_counts()["sink"].double()
        keep = torch.nonzero(counts > 0).reshape(-1)
        bounds = self.bins
        grid = torch.cartesian_prod(torch.arange(n_layers), torch.arange(n_heads), keep)  # [rows, 3]
        df = pd.DataFrame({"layer": grid[:, 0].numpy(), "head": grid[:, 1].numpy(), "bin": grid[:, 2].numpy()})
        df["pos_lo"] = [bounds[k][0] for k in df["bin"]]
        df["pos_hi"] = [-1 if bounds[k][1] is None else bounds[k][1] for k in df["bin"]]
        df["n_queries"] = counts[grid[:, 2]].numpy()
        for col, val in t.items():
            assert val.shape[-1] == K
            df[col] = val[:, :, keep].reshape(-1).numpy()
        return df

    def _check_key_mass(self) -> KeyMassSums:
        if self._keys is None:
            raise RuntimeError("record(..., key_mass=True) is needed for the attention received per key")
        self._check_complete()
        return self._keys

    def key_queries(self) -> torch.Tensor:
        """``[n_layers, keys]`` (or ``key_bins`` bins) float64: the selected queries that can attend
        each key, summed over sequences (for a bin: its (query, key) pairs); ``key_attention`` is
        the pooled ``key_mass`` over this. Needs ``key_mass``."""
        keys = self._check_key_mass()
        n = keys.n_slots_seen()
        return torch.stack([fit(keys.reach[layer].cpu(), n) for layer in range(self.n_layers)])

    def key_tokens(self) -> torch.Tensor:
        """``[n_sequences, keys]`` int64 token id at each key position of every sequence (counted
        from its first real token, as ``key_mass``); -1 where a sequence has no key or its forward
        had no ``input_ids``. Needs ``key_mass``."""
        return self._check_key_mass().tokens()

    def top_keys(self, n: int, sequence: Optional[int] = None) -> pd.DataFrame:
        """Per (layer, head) the ``n`` key positions that received the most attention (largest
        ``key_mass``): columns ``layer``, ``head``, ``rank`` (0 = most), ``position``,
        ``token_id``, ``key_mass``, ``key_attention``.

        ``sequence=None`` ranks the mean over sequences (``tensors()``); ``token_id`` is the token
        at that position if every sequence that reaches it has the same one (one document), else
        -1. ``sequence=s`` (needs ``per_sample``) ranks that sequence's keys. Not with ``key_bins``."""
        check_top_n(n)
        keys = self._check_key_mass()
        if keys.edges is not None:
            raise ValueError("top_keys() ranks key positions: it needs record(..., key_mass=True) without key_bins")
        tokens = keys.tokens()
        if sequence is None:
            stats, token_ids = keys.pooled(), common_tokens(tokens, keys.reached(keys.lengths(), tokens.shape[1]))
        else:
            self._check_per_sample()
            if isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence < tokens.shape[0]:
                raise ValueError(f"sequence must be an int in [0, {tokens.shape[0]}) (a recorded sequence), got {sequence!r}")
            stats = {name: t[sequence] for name, t in keys.per_sequence().items()}
            token_ids = tokens[sequence]
        return top_keys_frame(stats[KEY_MASS], stats[KEY_ATTENTION], token_ids, n)

    def close(self) -> None:
        self._hook.remove()
        self._done_hook.remove()


def _by_weight(channels: Iterator[tuple[str, torch.Tensor]], weights: dict) -> list[tuple[torch.Tensor, list]]:
    """``[(weight, [(name, [B, H, Nq, C] tensor), ...]), ...]``: the channels grouped by their query
    weight tensor (``weights[name]``; channels with one mask share one), in channel order."""
    groups: dict[int, tuple[torch.Tensor, list]] = {}
    for name, t in channels:
        w = weights[name]
        groups.setdefault(id(w), (w, []))[1].append((name, t))
    return list(groups.values())


def _copy2(d: dict) -> dict:
    """A copy of a dict of dicts (the inner dicts copied, their values shared)."""
    return {key: dict(inner) for key, inner in d.items()}


def _normalise_query_mask(query_mask) -> dict[str, torch.Tensor]:
    if query_mask is None:
        return {}
    masks = query_mask if isinstance(query_mask, dict) else {"default": query_mask}
    for name, qm in masks.items():
        if name != "default" and name not in MASK_GROUPS:
            raise ValueError(f"query_mask keys must be 'default' or one of {MASK_GROUPS}, got {name!r}")
        if not isinstance(qm, torch.Tensor) or qm.dim() != 2:
            raise TypeError(f"query_mask[{name!r}] must be a [batch, q_len] tensor")
    return dict(masks)


def is_recording(module) -> bool:
    """Whether a record() block is active on the model that ``module`` belongs to."""
    return _ACTIVE is not None and id(module) in _ACTIVE._module_ids


def _check_span(span: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if span is not None and (not isinstance(span, torch.Tensor) or span.dim() != 2 or span.shape[1] != 2):
        raise TypeError("span must be an integer tensor [batch, 2] of key ranges [start, end)")
    return span


def request_for(module, query, key, kpm, window: Optional[int] = None) -> Optional[_LayerCall]:
    """The active recording's call for this attention module (``window``: the layer's sliding
    window), or None (plain forward)."""
    rec = _ACTIVE
    if rec is None or id(module) not in rec._module_ids:
        return None
    return rec._layer_call(module, query, key, kpm, window)


@contextmanager
def record(
    model: torch.nn.Module,
    offsets: Sequence[int] = (),
    token_ids: Optional[torch.Tensor] = None,
    entropy: bool = False,
    query_mask: Optional[torch.Tensor] = None,
    per_sample: bool = False,
    *,
    token_match: bool = False,
    probe_keys: Optional[torch.Tensor] = None,
    position_bins: Optional[BinSpec] = None,
    distance: bool = False,
    local_window: Optional[int] = None,
    top1: bool = False,
    span: Optional[torch.Tensor] = None,
    key_mass: bool = False,
    key_bins: Optional[BinSpec] = None,
) -> Iterator[Recording]:
    """Record per-(layer, head) attention statistics of every forward inside the block.

    Args:
        model: a transformers model loaded with ``attn_implementation="circuit_stats"`` (or an nnsight
            ``LanguageModel`` wrapping one: its ``._module`` is recorded).
        offsets: fixed diagonal offsets (``1`` = previous token) -> columns ``offset_<o>``.
        token_ids: ``[B, N]`` ids for token-match ``induction`` / ``duplicate``; defaults to the
            forward's ``input_ids`` when ``token_match=True``.
        entropy: also record row entropy (nats).
        query_mask: ``[B, Nq]`` bool, the queries to average over (default: every non-padded one);
            or a dict from statistic group (any of ``kernels.names.CHANNELS``: ``"sink"``,
            ``"offsets"``, ``"probes"``, ``"induction"``, ``"duplicate"``, ``"entropy"``,
            ``"distance"``, ``"local"``, ``"top1_prob"``, ``"span"``, ``"learned_sink"``; or
            ``"default"``, every group not named) to such a mask.
        per_sample: also keep per-sequence means (``rec.per_sample()``).
        token_match: record ``induction`` and ``duplicate`` (implied by ``token_ids``).
        probe_keys: ``[B, P]`` absolute key positions -> columns ``probe_<t>``.
        position_bins: ``"log2"`` (bins ``[0,1), [1,2), [2,4), ...``) or increasing edges
            ``[e_0, ..., e_m]`` (bins ``[e_k, e_k+1)``; the last edge may be ``math.inf``): reduce
            every statistic per bin of query position too. A query's position counts from the
            first real token of its sequence (left padding does not count), and continues
            across forwards that extend the KV cache. Results gain a bin axis.
        distance: expected attention distance ``sum_j p_ij (i - j)`` in tokens -> ``distance``.
        local_window: ``W`` -> ``local``, the attention mass on the last ``W`` keys.
        top1: ``top1_prob``, the probability of each row's largest score; the top-1 key of the
            last query of the latest forward is ``rec.last_top1_index()``.
        span: ``[B, 2]`` key range ``[start, end)`` per row -> ``span``, the mass on it.
        key_mass: the attention each key receives, summed over the selected queries (the query
            mask's ``"key_mass"`` group, else its default). A key's position counts from the first
            real token of its sequence (left padding does not count); forwards that extend the KV
            cache add to the same keys. ``rec.tensors()["key_mass"]`` ``[layers, heads, keys]``:
            the mean over the sequences that reach each key; ``rec.tensors()["key_attention"]``:
            the pooled mass over the number of selected queries that can attend the key (causal,
            inside a sliding window): Gu et al.'s ``alpha_k`` for every k (NaN where none can);
            both per sequence in ``rec.per_sample()`` (with ``per_sample``), the token ids in
            ``rec.key_tokens()``, the most-attended keys in ``rec.top_keys(n)``. Memory
            O(layers x heads x keys), times the sequences with ``per_sample``.
        key_bins: the same spec as ``position_bins``: sum the key mass per bin of key position
            (on the device) instead of per key; ``key_attention`` is then the bin's mass over its
            (query, key) pairs.

    ``sink`` is always recorded. Results: ``rec.tensors()``, ``rec.summary()``.
    """
    global _ACTIVE
    model = unwrap_model(model)  # an nnsight LanguageModel: the transformers model it wraps
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"record() needs a transformers model, got {type(model).__name__}")
    if not uses_circuit_stats(model) and attention_interface_refusal(model):
        raise NotImplementedError(attention_interface_refusal(model))
    if not uses_circuit_stats(model):
        raise ValueError(
            f"record() needs the model to use attn_implementation='circuit_stats' (it uses "
            f"{getattr(model.config, '_attn_implementation', None)!r}). Load it with "
            "AutoModelForCausalLM.from_pretrained(..., attn_implementation='circuit_stats') or call "
            "model.set_attn_implementation('circuit_stats') after `import circuit_stats`."
        )
    if _ACTIVE is not None:
        raise RuntimeError("record() blocks cannot be nested: a recording is already active")
    options = RecordOptions(offsets=offsets, token_match=token_match, entropy=entropy, per_sample=per_sample,
                            position_bins=position_bins, distance=distance, local_window=local_window, top1=top1,
                            key_mass=key_mass, key_bins=key_bins)
    rec = Recording(model, options, token_ids=token_ids, query_mask=query_mask, probe_keys=probe_keys, span=span)
    _ACTIVE = rec
    try:
        yield rec
    finally:
        _ACTIVE = None
        rec.close()
