"""The torch backend's head-parallel CPU path (query heads shared out to threads, one intra-op
thread each) vs the float64 reference, on every case, modifier and statistic."""

import pytest
import torch
from circuit_stats.kernels import attention_with_stats, attention_with_stats_naive, chunked
from conftest import DEVICE
from kernel_cases import CASES, OUT_TOL, assert_stats_close, make_inputs, random_span

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="the head-parallel path is CPU only")

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


@pytest.mark.parametrize("modifier", list(MODIFIERS))
@pytest.mark.parametrize("case", list(CASES))
def test_heads_in_threads_match_float64(case, modifier, heads_in_threads, seed, poison_outputs):
    B, Hq, Hkv, Nq, Nk, padding = CASES[case]
    q, k, v, tok, mask = make_inputs(B, Hq, Hkv, Nq, Nk, 32, torch.float32, padding)
    mods = dict(MODIFIERS[modifier])
    if mods.pop("sinks", False):
        mods["sinks"] = torch.randn(Hq, device=DEVICE) * 2
    kw = dict(key_padding_mask=mask, offsets=(0, 1, 4), probe_keys=torch.randint(0, Nk, (B, 2), device=DEVICE),
              token_ids=tok, entropy=True, distance=True, local_window=3, top1=True, span=random_span(B, Nk), **mods)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), **kw)
    out, stats = attention_with_stats(q, k, v, backend="torch", **kw)
    assert heads_in_threads == [(1, 1)] * Hq, "the heads did not run one per call with one intra-op thread"
    assert torch.get_num_threads() == 2, "the intra-op thread count was not restored"
    what = f"{case} {modifier} seed={seed}"
    assert (out.double() - ref_out).abs().max().item() <= OUT_TOL[torch.float32], what
    assert_stats_close(stats, ref, torch.float32, what, Nk)


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
