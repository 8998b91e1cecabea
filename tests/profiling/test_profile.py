"""profile(): chunked prefill equals one pass, resumable output, failures recorded, plots."""

import importlib
import json
import math

import pandas as pd
import pytest
import torch
from circuit_stats.finite import NonFiniteError
from circuit_stats.models import tiny_model
from circuit_stats.profiling import chunked_prefill, profile
from circuit_stats.profiling.profile import STATISTICS, profile_document

import circuit_stats

pytestmark = pytest.mark.hf

STATS = STATISTICS
PROFILE_MODULE = importlib.import_module("circuit_stats.profiling.profile")  # the package exports the function


@pytest.fixture
def model(seed):
    return tiny_model("pythia", seed=seed % 1000, initializer_range=0.3, vocab_size=64)


def token_docs(seed, lengths=(70, 23, 41)):
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in lengths:
        ids = torch.randint(3, 20, (n,), generator=g)
        ids[n // 2 : n // 2 + 5] = ids[1:6]
        docs.append(ids.tolist())
    return docs


@pytest.mark.parametrize("chunk_size", [5, 32])
def test_chunked_prefill_equals_one_pass(model, seed, chunk_size):
    ids = token_docs(seed, (67,))[0]
    one = profile_document(model, ids, edges=[0, 1, 4, 16, 64, math.inf], statistics=STATS, local_window=5,
                           chunk_size=10**6).rows
    chunked = profile_document(model, ids, edges=[0, 1, 4, 16, 64, math.inf], statistics=STATS, local_window=5,
                               chunk_size=chunk_size).rows
    pd.testing.assert_frame_equal(chunked, one, atol=2e-5, rtol=1e-4)
    assert one["n_queries"].groupby([one["layer"], one["head"]]).sum().eq(67).all()


def test_chunked_prefill_keeps_the_cache_growing(model):
    cache = chunked_prefill(model, torch.randint(3, 20, (1, 25)), chunk_size=4)
    assert cache.get_seq_length() == 25
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_prefill(model, torch.randint(3, 20, (1, 5)), chunk_size=0)


def test_profile_rows_and_pooling(model, seed):
    docs = token_docs(seed)
    df = profile(model, docs, statistics=STATS, chunk_size=16, progress=False)
    assert list(df.columns[:10]) == ["doc_index", "doc_id", "n_tokens", "doc_tokens", "layer", "head", "bin",
                                     "pos_lo", "pos_hi", "n_queries"]
    assert list(df.columns[10:]) == list(STATS)
    assert not df.isna().any().any()
    per_doc = df.groupby(["doc_index", "layer", "head"])["n_queries"].sum().groupby("doc_index").first()
    assert per_doc.tolist() == [70, 23, 41]
    # each document's rows are that document alone, through record() in one forward
    with torch.no_grad(), circuit_stats.record(model, offsets=(1,), token_match=True, entropy=True,
                                               position_bins="log2") as rec:
        model(torch.tensor([docs[1]]))
    want = rec.summary()
    got = df[df["doc_index"] == 1].reset_index(drop=True)
    for col in ("sink", "induction", "entropy"):
        torch.testing.assert_close(torch.tensor(got[col].values), torch.tensor(want[col].values), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(got["previous_token"].values), torch.tensor(want["offset_1"].values),
                               atol=2e-5, rtol=1e-4)


def test_max_tokens_truncates(model, seed):
    df = profile(model, token_docs(seed), statistics=("sink",), max_tokens=30, progress=False)
    docs = df.drop_duplicates("doc_index")
    assert docs["n_tokens"].tolist() == [30, 23, 30] and docs["doc_tokens"].tolist() == [70, 23, 41]


def test_strings_need_an_explicit_tokenizer(model):
    with pytest.raises(ValueError, match="explicit choice 'bytes'"):
        profile(model, ["some text"], progress=False)
    df = profile(model, ["\x01\x02\x03"], tokenizer="bytes", statistics=("sink",), progress=False)
    assert df["n_tokens"].eq(3).all()
    with pytest.raises(ValueError, match="vocabulary of 64"):  # without out=, a failing document raises
        profile(model, ["abc"], tokenizer="bytes", progress=False)


def test_bad_arguments_fail_before_any_work(model):
    for kw, match in ((dict(statistics=("nope",)), "statistics"), (dict(position_bins="lin"), "position_bins"),
                      (dict(chunk_size=0), "chunk_size"), (dict(local_window=0), "local_window")):
        with pytest.raises((ValueError, TypeError), match=match):
            profile(model, [[1, 2, 3]], progress=False, **kw)
    sdpa = tiny_model("pythia", attn_implementation="sdpa")
    with pytest.raises(ValueError, match="circuit_stats"):
        profile(sdpa, [[1, 2, 3]], progress=False)


def test_output_directory_resumes_and_records_failures(model, seed, tmp_path, monkeypatch):
    docs = token_docs(seed) + [[5, 99, 6], []]  # id 99 is outside the vocabulary of 64; an empty one
    out = tmp_path / "prof"
    calls = []
    real = profile_document

    def killed_after_two(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed while profiling the third document
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(PROFILE_MODULE, "profile_document", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        profile(model, docs, out=out, statistics=STATS, progress=False)
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["0000000.parquet", "0000001.parquet"]
    assert not (out / "profile.parquet").exists(), "no result file that looks complete"

    calls.clear()
    monkeypatch.setattr(PROFILE_MODULE, "profile_document", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    df = profile(model, docs, out=out, statistics=STATS, progress=False)
    assert len(calls) == 1, "only the document in flight is redone"
    assert sorted(df["doc_index"].unique()) == [0, 1, 2]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "profile.parquet"), df)
    failures = json.loads((out / "failures.json").read_text())
    assert [(f["doc_index"], f["error"].split(":")[0]) for f in failures] == [(3, "ValueError"), (4, "ValueError")]
    assert "vocabulary of 64" in failures[0]["error"] and "empty" in failures[1]["error"]
    assert {p.name for p in (out / "plots").iterdir()} == {f"position_{s}.png" for s in STATS} | {"heads.png"}
    summary = (out / "summary.md").read_text()
    assert "3 profiled, 2 failed" in summary

    with pytest.raises(ValueError, match="other settings"):
        profile(model, docs, out=out, statistics=("sink",), progress=False)


def nan_embedding(model, token: int):
    """``model`` with a NaN embedding row for ``token``: every document holding it has NaN activations."""
    with torch.no_grad():
        model.get_input_embeddings().weight[token] = float("nan")
    return model


def test_a_nan_document_fails_and_stays_out_of_the_pooled_summary(model, seed, tmp_path):
    clean, dirty = token_docs(seed, (70, 41))
    dirty[len(dirty) // 2] = 30  # id 30 never occurs elsewhere (token_docs draws from [3, 20))
    nan_embedding(model, 30)
    alone = profile(model, [clean], out=tmp_path / "clean", statistics=STATS, progress=False, plots=False)
    df = profile(model, [clean, dirty], out=tmp_path / "both", statistics=STATS, progress=False, plots=False)
    failures = json.loads((tmp_path / "both" / "failures.json").read_text())
    assert [(f["doc_index"], f["error"].split(":")[0]) for f in failures] == [(1, "NonFiniteError")]
    assert "NaN" in failures[0]["error"]
    assert sorted(df["doc_index"].unique()) == [0] and not df[list(STATS)].isna().any().any()
    summary = (tmp_path / "both" / "summary.md").read_text()
    assert "1 profiled, 1 failed" in summary
    # the pooled table is the clean document's alone, not diluted by NaN counted as 0
    table = lambda text: [line for line in text.splitlines() if line.startswith("| ") and "layer" not in line]
    assert table(summary) == table((tmp_path / "clean" / "summary.md").read_text())
    assert not alone[list(STATS)].isna().any().any()
    with pytest.raises(NonFiniteError, match="NaN"):  # without out=, it raises
        profile(model, [dirty], statistics=STATS, progress=False)


def test_pooling_propagates_nan_instead_of_counting_it_as_zero(tmp_path):
    from circuit_stats.profiling.report import pooled, write_summary

    rows = pd.DataFrame({"doc_index": [0, 1, 0, 1], "n_tokens": 8, "layer": 0, "head": [0, 0, 1, 1], "bin": 0,
                         "pos_lo": 0, "pos_hi": -1, "n_queries": [4, 4, 4, 4],
                         "local": [1.0, float("nan"), 0.5, 0.25], "sink": [0.5, 0.5, 0.2, 0.4]})
    per_head = pooled(rows, ("layer", "head")).set_index("head")
    assert math.isnan(per_head.loc[0, "local"]) and per_head.loc[1, "local"] == pytest.approx(0.375)
    assert per_head.loc[0, "sink"] == pytest.approx(0.5) and per_head.loc[1, "sink"] == pytest.approx(0.3)
    assert math.isnan(pooled(rows, ("layer",))["local"].iloc[0])
    text = write_summary(rows, tmp_path, {}, {}, 0.0).read_text()
    assert "| 0 | [0, inf) | 8 | 0.400 | nan |" in text
    assert "NaN: L0H0" in text


def test_profile_files_follow_the_umask(model, seed, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        profile(model, token_docs(seed, (20, 12)), out=tmp_path / "p", statistics=["sink"], progress=False)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "p").rglob("*") if p.is_file()]
    assert len(files) >= 5  # profile.json, 2 parts, profile.parquet, summary.md, plots
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in files), {p.name: oct(p.stat().st_mode) for p in files}


@pytest.mark.parametrize("doc, bad", [([5, -3, 6], "token id -3 \\(position 1\\)"),
                                      ([5, 70, 6, 99], "token id 70 \\(position 1\\)")])
def test_an_out_of_vocabulary_id_is_named(model, doc, bad):
    """The message names the offending id (not the document's largest) and the vocabulary of 64."""
    with pytest.raises(ValueError, match=bad + " does not fit the model's vocabulary of 64 \\(ids 0..63\\)"):
        profile(model, [doc], statistics=("sink",), progress=False)
