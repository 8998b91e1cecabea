"""The torch backend's head-parallel CPU path (query heads shared out to threads, one intra-op
thread each) vs the float64 reference, on every case, modifier and statistic, with the
token-match masses gathered at matching pairs and from dense weights."""

import pytest
import torch
from circuit_stats.kernels.request import StatsRequest
from circuit_stats.kernels import SideInputs, attention_with_stats, attention_with_stats_naive, chunked
from devices import DEVICE
from kernel_cases import CASES, OUT_TOL, assert_stats_close, make_inputs, random_span

pytestmark = [pytest.mark.torch_only,  # the torch backend alone
              pytest.mark.skipif(DEVICE != "cpu", reason="the head-parallel path is CPU only")]

MODIFIERS = {"none": {}, "window": dict(window=6), "softcap": dict(softcap=2.5), "sinks": dict(sinks=True)}


@pytest.fixture
def heads_in_threads(monkeypatch):
    """Every call takes the threaded path (2 intra-op threads, no size threshold); yields the
    number of heads of each per-thread call and the intra-op thread count each one saw."""
    runs = []
    serial = chunked.attention_heads_chunked

    def spy(q, *args, **kwargs):
        runs.append((q.shape[1], torch.get_num_threads()))
        return serial(q, *args, **kwargs)

    monkeypatch.setattr(chunked, "PARALLEL_MIN_SCORES", 0)
    monkeypatch.setattr(chunked, "attention_heads_chunked", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield runs
    torch.set_num_threads(threads)


@pytest.mark.parametrize("token_match", ["pairs", "dense"])
@pytest.mark.parametrize("modifier", list(MODIFIERS))
@pytest.mark.parametrize("case", list(CASES))
def test_heads_in_threads_match_float64(case, modifier, token_match, heads_in_threads, seed, poison_outputs,
                                        monkeypatch):
    monkeypatch.setattr(chunked, "SPARSE_TOKEN_MATCH_MAX_FRACTION", 1.0 if token_match == "pairs" else 0.0)
    B, Hq, Hkv, Nq, Nk, padding = CASES[case]
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, Nq, Nk, 32, torch.float32, padding)
    mods = dict(MODIFIERS[modifier])
    if mods.pop("sinks", False):
        mods["sinks"] = torch.randn(Hq, device=DEVICE) * 2
    probes, span = torch.randint(0, Nk, (B, 2), device=DEVICE), random_span(B, Nk)
    kw = dict(key_padding_mask=mask, offsets=(0, 1, 4), probe_keys=probes, token_ids=tok, entropy=True, distance=True,
              local_window=3, top1=True, span=span, **mods)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    out, stats = attention_with_stats(q, k, v, backend="torch", **kw)
    assert heads_in_threads[:Hq] == [(1, 1)] * Hq, "the heads did not run one per call with one intra-op thread"
    assert torch.get_num_threads() == 2, "the intra-op thread count was not restored"
    what = f"{case} {modifier} seed={seed}"
    assert (out.double() - ref_out).abs().max().item() <= OUT_TOL[torch.float32], what
    assert_stats_close(stats, ref, torch.float32, what, Nk)
    # chunks of 3 queries: a window's tile starts after key 0, pairs left of it must not count
    side = SideInputs.build(batch=B, k_len=Nk, device=q.device, key_padding_mask=mask, token_ids=tok,
                            probe_keys=probes, span=span)
    request = StatsRequest(scale=32 ** -0.5, offsets=(0, 1, 4), entropy=True, distance=True, local_window=3, top1=True,
                           **mods)
    out, stats = chunked.attention_with_stats_chunked(q, k, v, request, side, chunk_size=3)
    assert (out.double() - ref_out).abs().max().item() <= OUT_TOL[torch.float32], what + " chunk=3"
    assert_stats_close(stats, ref, torch.float32, what + " chunk=3", Nk)


def test_threads_keep_the_callers_grad_mode(heads_in_threads):
    """Grad mode is per thread: the heads' threads record for autograd exactly when the caller
    does (statistics under no_grad must not keep every chunk's scores alive for a backward)."""
    q, k, v, tok, _ = make_inputs(1, 2, 2, 9, 9, 16, torch.float32, None)
    q.requires_grad_(True)
    out, stats = attention_with_stats(q, k, v, token_ids=tok, entropy=True, backend="torch")
    assert out.requires_grad and stats.entropy.requires_grad
    with torch.no_grad():
        out, stats = attention_with_stats(q, k, v, token_ids=tok, entropy=True, backend="torch")
    assert not out.requires_grad and not stats.entropy.requires_grad
    assert len(heads_in_threads) == 4
