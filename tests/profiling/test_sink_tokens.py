"""profile(statistics=[..., "key_attention"])'s per-token-id sink table: its sums against a direct
count, its sink rows against the sink protocol's secondary sinks on the same texts, and sharded or
resumed runs against one run."""

import importlib
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

import circuit_stats
from circuit_stats.demo.series import demo_series_dir
from circuit_stats.finite import NonFiniteError
from circuit_stats.models import tiny_model
from circuit_stats.profiling import profile
from circuit_stats.profiling.sink_tokens import COLUMNS, TABLE, document_sums, merge_sums
from circuit_stats.key_sinks import SECONDARY_COLUMNS
from circuit_stats.protocols.texts import ByteTokenizer, default_texts
from circuit_stats.sharding import Shard

pytestmark = pytest.mark.hf

PROFILE_MODULE = importlib.import_module("circuit_stats.profiling.profile")  # the package exports the function
EDGES = [0, 1, 4, 16, math.inf]
EPS, MIN_QUERIES = 0.3, 4


def planted_document(g, n, n_layers=2, n_heads=3):
    """``(alpha [L, H, n], ids [n])``: alphas in (0, 0.2) with a few keys planted at 0.5 or 0.6 (over
    EPS); ids from a small vocabulary (tokens repeat), token 90 only in the last MIN_QUERIES - 1
    positions (never eligible) and token 91 only at position 0."""
    alpha = torch.rand(n_layers, n_heads, n, generator=g) * 0.2 + 1e-3
    planted = torch.rand(n_layers, n_heads, n, generator=g) < 0.15
    alpha = torch.where(planted, 0.5 + 0.1 * torch.randint(0, 2, alpha.shape, generator=g), alpha)
    ids = torch.randint(3, 9, (n,), generator=g)
    ids[0] = 91
    ids[-(MIN_QUERIES - 1):] = 90
    return alpha.float(), ids.tolist()


def direct_table(docs):
    """The sink table by a loop over every key of every document."""
    keys = {}  # (layer, head, token) -> list of (doc, eligible, alpha)
    for d, (alpha, ids) in enumerate(docs):
        L, H, n = alpha.shape
        for p in range(1, n):
            for layer in range(L):
                for head in range(H):
                    eligible = p + MIN_QUERIES <= n
                    keys.setdefault((layer, head, ids[p]), []).append((d, eligible, float(alpha[layer, head, p])))
    rows = {}
    for key, occ in keys.items():
        vals = [a for _, ok, a in occ if ok]
        n_sinks = sum(a > EPS for a in vals)
        rows[key] = dict(n_texts=len({d for d, _, _ in occ}), n_occurrences=len(occ), n_keys=len(vals), n_sinks=n_sinks,
                         alpha_mean=sum(vals) / len(vals) if vals else math.nan,
                         alpha_max=max(vals) if vals else math.nan,
                         status="sink" if n_sinks else ("not a sink" if vals else "too few queries"))
    return rows


def test_document_sums_pool_to_a_direct_count(seed):
    g = torch.Generator().manual_seed(seed)
    docs = [planted_document(g, n) for n in (31, 12, 3, 25)]  # the 3-token one has no eligible key
    table = merge_sums([document_sums(a, ids, EPS, MIN_QUERIES) for a, ids in docs], "bytes")
    want = direct_table(docs)
    assert list(table.columns) == COLUMNS and len(table) == len(want)
    assert set(table["status"]) == {"sink", "not a sink", "too few queries"}, "inputs built to hold every status"
    assert 91 not in set(table["token_id"]), "position 0 is never a secondary sink"
    for row in table.to_dict("records"):
        w = want[(row["layer"], row["head"], row["token_id"])]
        assert {k: row[k] for k in ("n_texts", "n_occurrences", "n_keys", "n_sinks", "status")} == \
            {k: w[k] for k in ("n_texts", "n_occurrences", "n_keys", "n_sinks", "status")}
        np.testing.assert_allclose([row["alpha_mean"], row["alpha_max"]], [w["alpha_mean"], w["alpha_max"]], rtol=1e-6)
        assert row["token"] == chr(row["token_id"])
    # NaN only where no key is eligible, and said so
    nan = table["alpha_mean"].isna() | table["alpha_max"].isna()
    assert nan.any() and (nan == (table["status"] == "too few queries")).all()
    assert (table.loc[nan, "n_keys"] == 0).all() and set(table.loc[nan, "token_id"]) == {90}


def test_a_non_finite_alpha_fails_the_document(seed):
    alpha, ids = planted_document(torch.Generator().manual_seed(seed), 20)
    alpha[1, 2, int(torch.randint(0, 20, (1,)))] = math.nan
    with pytest.raises(NonFiniteError, match="alpha_k"):
        document_sums(alpha, ids, EPS, MIN_QUERIES)


@pytest.fixture(scope="module")
def demo_model():
    path = demo_series_dir() / "checkpoint-1600"
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="circuit_stats", dtype=torch.float32)


def short_texts(seed, n=5, seq_len=64):
    """Texts of 20-64 bytes: each is one prompt of the sink protocol (no window cut)."""
    g = torch.Generator().manual_seed(seed)
    texts = default_texts()
    picked = [texts[int(i)] for i in torch.randperm(len(texts), generator=g)[:n]]
    return [t[int(s): int(s) + int(k)] for t, s, k in zip(picked, torch.randint(0, 200, (n,), generator=g),
                                                         torch.randint(20, seq_len + 1, (n,), generator=g))]


def well_posed_eps(model, texts, quantile=0.9):
    """A threshold near ``quantile`` of the texts' eligible alpha_k, with none within 1e-4 of it."""
    alphas = []
    for t in texts:
        ids = torch.tensor([ByteTokenizer()(t)])
        with circuit_stats.record(model, key_mass=True) as rec:
            model(ids)
        alphas.append(rec.tensors()["key_attention"][..., 1:ids.shape[1] - MIN_QUERIES + 1].reshape(-1))
    values = torch.cat(alphas).sort().values
    i = int(quantile * (len(values) - 1))
    while values[i + 1] - values[i] < 2e-4:
        i += 1
    return float(values[i] + values[i + 1]) / 2


def test_sink_rows_equal_the_sink_protocol(demo_model, seed):
    texts = short_texts(seed)
    eps = well_posed_eps(demo_model, texts)
    scored = circuit_stats.score_heads(demo_model, "sink", texts=texts, tokenizer="bytes", seq_len=64, eps=eps,
                                       secondary_sinks=True, min_queries=MIN_QUERIES, batch_size=3, progress=False)
    want = pd.DataFrame(scored.attrs["secondary_sinks"]).sort_values(["layer", "head", "token_id"], ignore_index=True)
    table, got = profiled_sinks(demo_model, texts, eps, chunk_size=16)
    assert len(want) > 5
    exact = ["layer", "head", "token_id", "token", "n_keys", "n_sinks"]
    pd.testing.assert_frame_equal(got[exact], want[exact])
    # alpha_k of chunked forwards (the profile) vs right-padded batches of 3 (the protocol): float32 rounding
    alphas = ["alpha_mean", "alpha_max"]
    pd.testing.assert_frame_equal(got[alphas], want[alphas], rtol=0, atol=1e-6)
    # the tokens that are not sinks: every eligible occurrence at or under eps
    assert (table.loc[table["status"] == "not a sink", "alpha_max"] <= eps).all()
    # the same forwards (one per text, unpadded, unchunked): the same numbers, up to float64 summation order
    scored = circuit_stats.score_heads(demo_model, "sink", texts=texts, tokenizer="bytes", seq_len=64, eps=eps,
                                       secondary_sinks=True, min_queries=MIN_QUERIES, batch_size=1, progress=False)
    want = pd.DataFrame(scored.attrs["secondary_sinks"]).sort_values(["layer", "head", "token_id"], ignore_index=True)
    pd.testing.assert_frame_equal(profiled_sinks(demo_model, texts, eps, chunk_size=10**6)[1], want, rtol=1e-12)


def profiled_sinks(model, texts, eps, chunk_size):
    """``(table, its "sink" rows in the sink protocol's columns, by layer, head, token id)``."""
    rows = profile(model, texts, tokenizer="bytes", statistics=["sink", "key_attention"], chunk_size=chunk_size,
                   sink_eps=eps, sink_min_queries=MIN_QUERIES, progress=False)
    table = pd.DataFrame(rows.attrs["sink_tokens"])
    sinks = table[table["status"] == "sink"][list(SECONDARY_COLUMNS)]
    return table, sinks.sort_values(["layer", "head", "token_id"], ignore_index=True)


def token_docs(seed, lengths=(30, 9, 44, 17, 25, 6)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 20, (n,), generator=g).tolist() for n in lengths]


def test_sharded_and_resumed_runs_write_the_one_run_table(seed, tmp_path, monkeypatch):
    model = tiny_model("pythia", seed=seed % 1000, initializer_range=0.3, vocab_size=64)
    docs = token_docs(seed)
    kw = dict(position_bins=EDGES, statistics=["sink", "key_attention"], chunk_size=7, sink_eps=0.1,
              sink_min_queries=MIN_QUERIES, progress=False, plots=False)
    one = profile(model, docs, out=tmp_path / "one", **kw)
    single = pd.read_parquet(tmp_path / "one" / TABLE)
    assert (single["status"] == "sink").any() and (single["status"] == "not a sink").any()
    assert single[single["n_keys"] > 0][["alpha_mean", "alpha_max"]].notna().all().all()
    memory = profile(model, docs, **kw)
    pd.testing.assert_frame_equal(pd.DataFrame(memory.attrs["sink_tokens"]), single)
    pd.testing.assert_frame_equal(memory, one)

    for i in range(3):
        profile(model, docs, out=tmp_path / "sharded", shard=Shard(i, 3), **kw)
        assert (tmp_path / "sharded" / TABLE).exists() == (i == 2), "only the merging process writes the table"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "sharded" / TABLE), single)

    real, calls = PROFILE_MODULE.profile_document, []

    def killed_on_the_third(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(PROFILE_MODULE, "profile_document", killed_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        profile(model, docs, out=tmp_path / "resumed", **kw)
    assert not (tmp_path / "resumed" / TABLE).exists()
    monkeypatch.setattr(PROFILE_MODULE, "profile_document", real)
    profile(model, docs, out=tmp_path / "resumed", **kw)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "resumed" / TABLE), single)
    summaries = [(tmp_path / d / "summary.md").read_text().split("## Secondary sinks")[1] for d in ("one", "resumed")]
    assert summaries[0] == summaries[1] and "sink_tokens.parquet" in summaries[0]
    assert "Tokens that are sinks in the most heads" in summaries[0]


def test_documents_too_short_for_min_queries_say_so(seed, tmp_path):
    model = tiny_model("pythia", seed=seed % 1000, vocab_size=64)
    profile(model, token_docs(seed, (5, 3)), out=tmp_path / "p", statistics=["sink", "key_attention"],
            sink_min_queries=8, progress=False, plots=False)
    table = pd.read_parquet(tmp_path / "p" / TABLE)
    assert len(table) and (table["status"] == "too few queries").all() and (table["n_keys"] == 0).all()
    assert "No key had 8 queries at or after it" in (tmp_path / "p" / "summary.md").read_text()


@pytest.mark.parametrize("bad, match", [
    (dict(sink_eps=0), "sink_eps must be a number in \\(0, 1\\)"),
    (dict(sink_eps=True), "sink_eps must be"),
    (dict(sink_min_queries=0), "sink_min_queries must be an int >= 1"),
    (dict(sink_min_queries=2.0), "sink_min_queries must be an int >= 1"),
])
def test_bad_sink_settings_are_refused_before_any_forward(bad, match, monkeypatch):
    model = tiny_model("pythia", vocab_size=64)
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("no forward may run"))
    with pytest.raises(ValueError, match=match):
        profile(model, [[5, 6, 7]], statistics=["sink", "key_attention"], progress=False, **bad)
