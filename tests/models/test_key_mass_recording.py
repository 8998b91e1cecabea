"""record(key_mass=True): the attention each key position receives, per sequence and pooled,
checked against column sums of HF eager attention probabilities (output_attentions) computed
with plain loops over an independently counted key position."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

import circuit_stats
from circuit_stats.demo.series import demo_series_dir
from circuit_stats.kernels.dispatch import TRITON_SUPPORTED_FEATURES
from circuit_stats.models import set_backend
from circuit_stats.models.families import WINDOW
from circuit_stats.profiling.prefill import cache_keyword
from hf_helpers import model_pair, positions_from_first_real_token

pytestmark = pytest.mark.hf

PATH = demo_series_dir() / "checkpoint-1600"
ATOL, RTOL = 2e-5, 1e-4


@pytest.fixture(params=["torch", "triton"])
def key_backend(request):
    if request.param == "triton" and "key_mass" not in TRITON_SUPPORTED_FEATURES:
        pytest.skip("the Triton kernel does not compute key_mass yet")
    set_backend(request.param)
    yield request.param
    set_backend("auto")


@pytest.fixture(scope="module")
def bundled():
    """The bundled demo checkpoint under circuit_stats and under eager attention (float32)."""
    ours = AutoModelForCausalLM.from_pretrained(PATH, attn_implementation="circuit_stats", dtype=torch.float32)
    eager = AutoModelForCausalLM.from_pretrained(PATH, attn_implementation="eager", dtype=torch.float32)
    return ours.eval(), eager.eval()


def left_padded_batch(seed: int, lengths=(23, 17, 9)):
    """Byte ids (printable ASCII, what the demo model knows) left-padded to the longest length."""
    g = torch.Generator().manual_seed(seed)
    N = max(lengths)
    ids = torch.randint(32, 127, (len(lengths), N), generator=g)
    mask = torch.zeros(len(lengths), N, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, N - n:] = 1
        ids[b, : N - n] = 0  # pad id
    return ids, mask


@torch.no_grad()
def eager_key_stats(eager, ids, mask, weight=None, window=None, counted_rows=None):
    """Per sequence ``(mass [B, L, H, P], reach [B, P], tokens [B, P])`` by key position: the
    column sums of eager probabilities over the counted queries (``weight [B, N]``, default every
    real query; ``counted_rows``: only the last rows), and how many counted queries can attend
    each position; NaN / -1 beyond a sequence's length. P = the longest sequence."""
    probs = torch.stack([a.double() for a in eager(ids, attention_mask=mask, output_attentions=True).attentions], 1)
    B, L, H, N, _ = probs.shape
    w = mask.double() if weight is None else weight.double() * mask
    if counted_rows is not None:
        w[:, : N - counted_rows] = 0
    pos = positions_from_first_real_token(mask)
    P = int(mask.sum(1).max())
    mass = torch.full((B, L, H, P), math.nan, dtype=torch.float64)
    reach = torch.full((B, P), math.nan, dtype=torch.float64)
    tokens = torch.full((B, P), -1, dtype=torch.long)
    for b in range(B):
        for j in range(N):
            p = int(pos[b, j])
            if p < 0:
                continue
            mass[b, ..., p] = sum(w[b, i] * probs[b, :, :, i, j] for i in range(N))
            reach[b, p] = sum(w[b, i] for i in range(N) if pos[b, i] >= p and (window is None or pos[b, i] - window < p))
            tokens[b, p] = ids[b, j]
    return mass, reach, tokens


def record_key_mass(model, forward, **kw):
    with torch.no_grad(), circuit_stats.record(model, key_mass=True, per_sample=True, **kw) as rec:
        forward()
    return rec


def check_per_sample(rec, mass, reach):
    got = rec.per_sample()
    torch.testing.assert_close(got["key_mass"].double(), mass, atol=ATOL, rtol=RTOL, equal_nan=True)
    torch.testing.assert_close(got["key_attention"].double(), mass / reach[:, None, None, :], atol=ATOL, rtol=RTOL,
                               equal_nan=True)


def test_left_padded_batch_matches_eager_column_sums(bundled, key_backend, seed):
    ours, eager = bundled
    ids, mask = left_padded_batch(seed)
    rec = record_key_mass(ours, lambda: ours(ids, attention_mask=mask))
    mass, reach, tokens = eager_key_stats(eager, ids, mask)
    assert not mass[0].isnan().any() and mass[2, ..., 9:].isnan().all()  # the shortest row ends at 9
    check_per_sample(rec, mass, reach)
    pooled = rec.tensors()
    torch.testing.assert_close(pooled["key_mass"].double(), mass.nanmean(0), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(pooled["key_attention"].double(), mass.nansum(0) / reach.nansum(0), atol=ATOL, rtol=RTOL)
    assert torch.equal(rec.key_tokens(), tokens)
    # the other statistics are unchanged by key_mass, and summary() holds no per-key column
    with torch.no_grad(), circuit_stats.record(ours) as plain:
        ours(ids, attention_mask=mask)
    torch.testing.assert_close(pooled["sink"], plain.tensors()["sink"])
    assert "key_mass" not in rec.summary().columns


def test_chunks_through_the_kv_cache_add_to_the_same_keys(bundled, key_backend, seed):
    ours, eager = bundled
    ids, mask = left_padded_batch(seed, lengths=(29,))

    def chunked():
        kw = {cache_keyword(ours): DynamicCache()}
        for lo, hi in ((0, 11), (11, 12), (12, 29)):
            ours(ids[:, lo:hi], use_cache=True, **kw)

    rec = record_key_mass(ours, chunked)
    mass, reach, _ = eager_key_stats(eager, ids, mask)
    assert torch.equal(reach[0], torch.arange(29, 0, -1).double())  # 29 - p queries at or after p
    check_per_sample(rec, mass, reach)
    torch.testing.assert_close(rec.tensors()["key_mass"].double(), mass[0], atol=ATOL, rtol=RTOL)


def test_generate_counts_the_decoded_queries(bundled, seed):
    ours, eager = bundled
    ids, mask = left_padded_batch(seed, lengths=(13, 8))
    with torch.no_grad(), circuit_stats.record(ours, key_mass=True, per_sample=True) as rec:
        out = ours.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    full = torch.cat([mask, torch.ones(2, 5, dtype=torch.long)], 1)
    # the last decoded token is never fed back: it is neither a query nor a key of the recording
    mass, reach, tokens = eager_key_stats(eager, out[:, :-1], full[:, :-1])
    assert reach[0, 0] == 13 + 4 and reach[1, 0] == 8 + 4
    check_per_sample(rec, mass, reach)
    assert torch.equal(rec.key_tokens(), tokens)


def test_query_mask_selects_the_counted_queries(bundled, seed):
    ours, eager = bundled
    ids, mask = left_padded_batch(seed)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.rand(ids.shape, generator=g) < 0.5
    chosen[:, -1] = True  # every row counts some query, and leaves some out
    chosen[:, -2] = False
    rec = record_key_mass(ours, lambda: ours(ids, attention_mask=mask), query_mask={"key_mass": chosen})
    mass, reach, _ = eager_key_stats(eager, ids, mask, weight=chosen.long())
    check_per_sample(rec, mass, reach)
    with torch.no_grad(), circuit_stats.record(ours) as plain:
        ours(ids, attention_mask=mask)
    torch.testing.assert_close(rec.tensors()["sink"], plain.tensors()["sink"])  # the mask is key_mass's only


def test_sliding_window_layers_count_the_queries_inside_the_window(seed):
    ours, eager = model_pair("mistral", seed=seed % 1000)
    ids, mask = left_padded_batch(seed, lengths=(19, 14))
    ids = ids % ours.config.vocab_size
    rec = record_key_mass(ours, lambda: ours(ids, attention_mask=mask))
    mass, reach, _ = eager_key_stats(eager, ids, mask, window=WINDOW)
    assert reach[0, 0] == WINDOW  # the window, not the 19 later queries, bounds who attends key 0
    check_per_sample(rec, mass, reach)


def test_key_bins_sum_the_positions_of_each_bin(bundled, seed):
    ours, eager = bundled
    ids, mask = left_padded_batch(seed)
    edges = [1, 4, 10, math.inf]
    rec = record_key_mass(ours, lambda: ours(ids, attention_mask=mask), key_bins=edges)
    mass, reach, _ = eager_key_stats(eager, ids, mask)
    P = mass.shape[-1]
    bins = [(1, 4), (4, 10), (10, P)]
    want = torch.stack([mass[..., lo:hi].nansum(-1) for lo, hi in bins], -1)
    want[2, ..., 2] = math.nan  # the 9-token row has no key in [10, inf)
    want_reach = torch.stack([reach[:, lo:hi].nansum(-1) for lo, hi in bins], -1)
    got = rec.per_sample()
    torch.testing.assert_close(got["key_mass"].double(), want, atol=ATOL, rtol=RTOL, equal_nan=True)
    torch.testing.assert_close(got["key_attention"].double(), want / want_reach[:, None, None], atol=ATOL,
                               rtol=RTOL, equal_nan=True)
    pooled = rec.tensors()
    torch.testing.assert_close(pooled["key_mass"].double(), want.nanmean(0), atol=ATOL, rtol=RTOL)
    assert pooled["key_mass"].shape == (2, 4, 3)


def test_top_keys_ranks_the_most_attended_positions(bundled, seed):
    ours, eager = bundled
    ids, mask = left_padded_batch(seed, lengths=(21, 21))
    ids[1] = ids[0]
    ids[1, 5] = (ids[0, 5] + 1 - 32) % 95 + 32  # the two documents differ at position 5 only
    rec = record_key_mass(ours, lambda: ours(ids, attention_mask=mask))
    mass, _, tokens = eager_key_stats(eager, ids, mask)
    top = rec.top_keys(3)
    assert len(top) == 2 * 4 * 3 and list(top["rank"][:3]) == [0, 1, 2]
    mean = mass.mean(0)
    for row in top.itertuples():
        want = mean[row.layer, row.head].topk(3)
        assert row.position == int(want.indices[row.rank])
        assert math.isclose(row.key_mass, float(want.values[row.rank]), rel_tol=RTOL, abs_tol=ATOL)
        assert row.token_id == (-1 if row.position == 5 else int(tokens[0, row.position]))
    one = rec.top_keys(2, sequence=1)
    for row in one.itertuples():
        assert row.position == int(mass[1, row.layer, row.head].topk(2).indices[row.rank])
        assert row.token_id == int(ids[1, row.position])


def test_a_forward_that_raises_adds_no_key_mass(bundled, seed):
    ours, _ = bundled
    ids, mask = left_padded_batch(seed)
    layer = ours.gpt_neox.layers[1]

    def fail(*args, **kwargs):
        raise RuntimeError("simulated")

    with torch.no_grad(), circuit_stats.record(ours, key_mass=True, per_sample=True) as rec:
        ours(ids, attention_mask=mask)
        handle = layer.register_forward_pre_hook(fail)
        with pytest.raises(RuntimeError, match="simulated"):
            ours(ids, attention_mask=mask)
        handle.remove()
    with torch.no_grad(), circuit_stats.record(ours, key_mass=True, per_sample=True) as once:
        ours(ids, attention_mask=mask)
    with pytest.warns(UserWarning, match="discarded"):
        got = rec.per_sample()["key_mass"]
    torch.testing.assert_close(got, once.per_sample()["key_mass"], equal_nan=True)


@pytest.mark.parametrize("kw, error, match", [
    (dict(key_mass="yes"), TypeError, "key_mass must be a bool"),
    (dict(key_bins=[0, 4]), ValueError, "key_bins bins the key mass: pass key_mass=True"),
    (dict(key_mass=True, key_bins=[4, 2]), ValueError, "key_bins edges must be >= 0 and strictly increasing"),
    (dict(key_mass=True, key_bins="log10"), ValueError, "key_bins must be 'log2'"),
    (dict(query_mask={"key_mass": torch.ones(1, 3, dtype=torch.bool)}), ValueError, r"record\(..., key_mass=True\)"),
])
def test_bad_key_mass_arguments_are_refused_before_any_forward(bundled, kw, error, match):
    ours, _ = bundled
    with pytest.raises(error, match=match):
        with circuit_stats.record(ours, **kw):
            raise AssertionError("the block must not run")


def test_bad_key_mass_queries_are_refused(bundled):
    ours, _ = bundled
    ids, mask = left_padded_batch(0)
    with torch.no_grad(), circuit_stats.record(ours, key_mass=True, key_bins="log2") as binned:
        ours(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="without key_bins"):
        binned.top_keys(3)
    with torch.no_grad(), circuit_stats.record(ours) as plain:
        ours(ids, attention_mask=mask)
    for call in (plain.top_keys, plain.key_tokens):
        with pytest.raises(RuntimeError, match=r"key_mass=True\) is needed"):
            call(3) if call == plain.top_keys else call()
    with torch.no_grad(), circuit_stats.record(ours, key_mass=True) as rec:
        ours(ids, attention_mask=mask)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be an int >= 1"):
            rec.top_keys(n)
    with pytest.raises(RuntimeError, match="per_sample=True"):
        rec.top_keys(3, sequence=0)


def test_inputs_embeds_give_the_key_mass_without_token_ids(bundled, seed):
    ours, eager = bundled
    ids, mask = left_padded_batch(seed)
    embeds = ours.get_input_embeddings()(ids).detach()
    rec = record_key_mass(ours, lambda: ours(inputs_embeds=embeds, attention_mask=mask))
    mass, reach, _ = eager_key_stats(eager, ids, mask)
    check_per_sample(rec, mass, reach)
    assert (rec.key_tokens() == -1).all() and rec.key_tokens().shape == (3, 23)
