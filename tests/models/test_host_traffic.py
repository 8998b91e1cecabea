"""Host work per forward of a Hugging Face model on the Triton path (issue 22 item 5, issue 23's fixed
costs): what reads the device or copies to it, and which extra device operations run, per forward
and per layer, outside and inside ``record()``. Counted under the interpreter with the kernel
launches apart (``host_traffic``); a GPU runs the same host code."""

from collections import Counter

import pytest
import torch
from circuit_stats.models import record, set_backend, tiny_model
from host_traffic import count_launches_apart

LAYERS = (2, 4)  # per-layer work = the difference between the two, over 2
B, N = 3, 21


@pytest.fixture
def traffic(monkeypatch):
    set_backend("triton")
    yield count_launches_apart(monkeypatch)
    set_backend("auto")


def batch(padded: bool):
    """Token ids from a small vocabulary (token matches happen) and a left-padded mask."""
    ids = torch.randint(3, 30, (B, N))
    mask = torch.ones(B, N, dtype=torch.long)
    if padded:
        mask[0, :4] = 0
        mask[1, :2] = 0
    return ids, mask


def counted_forward(traffic, model, ids, mask) -> tuple[Counter, Counter]:
    """(host reads and copies, ATen operators) of one forward (after a first, uncounted one), each
    as ``name @ where`` counts."""
    model(ids, attention_mask=mask, use_cache=False)
    traffic.clear()
    with traffic.counting():
        model(ids, attention_mask=mask, use_cache=False)
    return Counter(traffic.report()), Counter(f"{name} @ {where}" for name, where in traffic.ops)


def per_forward_and_layer(traffic, run) -> tuple[Counter, Counter, Counter]:
    """``run(model)`` -> (events, ops) for tiny Pythias of 2 and 4 layers: (events of the 2-layer
    forward, events per layer, package operators per layer)."""
    got = {}
    for layers in LAYERS:
        got[layers] = run(tiny_model("pythia", layers=layers, initializer_range=0.3, seed=layers))
    (ev2, ops2), (ev4, ops4) = got[2], got[4]
    per_layer_events = (ev4 - ev2) + (ev2 - ev4)  # any difference either way
    package_ops = Counter({op: n // 2 for op, n in (ops4 - ops2).items() if not op.endswith("@ ?")})
    return ev2, per_layer_events, package_ops


def op_names(ops: Counter) -> Counter:
    """Operator counts by ATen name (``aten.sort.default``), wherever they ran."""
    out = Counter()
    for op, n in ops.items():
        out[op.split(" @ ")[0]] += n
    return out


@pytest.mark.hf
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@torch.no_grad()
def test_outside_record_a_layer_reads_nothing_and_runs_only_the_kernel(traffic, padded, seed):
    """Outside ``record()`` a layer neither reads the device nor copies to it, and runs no device
    operation beside the kernel but its output buffers (output, ``lse``, ``sink``) and the
    ``[B, N, H, D]`` output layout transformers expects: no NaN-row marking of statistics nobody
    reads, no padding mask conversion or first-key search per layer (once per forward)."""
    ids, mask = batch(padded)
    forward, per_layer, ops = per_forward_and_layer(traffic, lambda m: counted_forward(traffic, m, ids, mask))
    assert not per_layer, f"host reads / copies per layer: {per_layer}"
    # Per forward: transformers' flash-attention mask reads whether anything is padded, and nothing else.
    assert all(" circuit_stats_mask" in e for e in forward.elements()), forward
    assert op_names(ops) == Counter({"aten.empty.memory_format": 3, "aten.transpose.int": 1,
                                     "aten.clone.default": 1}), ops
    assert traffic.launched and set(traffic.launched) == {"fused"}


ALL_STATISTICS = dict(offsets=(1, 2, 3), token_match=True, entropy=True)


@pytest.mark.hf
@torch.no_grad()
def test_inside_record_the_reads_are_per_forward_and_the_sorts_too(traffic, seed):
    """Inside ``record()`` with token matching, offsets and entropy on a left-padded batch: one read
    of the device per forward (the value check of the token ids, when the forward's side inputs
    are built) besides transformers' own, none per layer; the token-match sorts run once per
    forward (3 sorts: queries, keys, previous tokens), every channel of a layer is reduced by one
    weighted sum (one ``bmm``) and the statistics of NaN rows are marked by two operations."""
    ids, mask = batch(padded=True)

    def run(model):
        with record(model, **ALL_STATISTICS):
            return counted_forward(traffic, model, ids, mask)

    forward, per_layer, ops = per_forward_and_layer(traffic, run)
    assert not per_layer, f"host reads / copies per layer: {per_layer}"
    ours = Counter(e for e in forward.elements() if " circuit_stats_mask" not in e)
    assert sum(ours.values()) == 1 and next(iter(ours)).startswith("tolist @ kernels/side_inputs.py"), forward
    assert next(iter(ours)).endswith(" raise_failed"), forward
    names = op_names(ops)
    assert names["aten.sort.default"] == 0 and names["aten.searchsorted.Tensor"] == 0, ops
    assert names["aten.bmm.default"] == 1, ops
    # NaN rows: the [B, H, N] statistics marked by one multi-tensor multiply, the offsets by one fill
    assert names["aten._foreach_mul_.List"] == 1 and names["aten.masked_fill_.Scalar"] == 1, ops
    assert {"fused", "band"} == set(traffic.launched)
