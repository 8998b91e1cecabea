"""profile() over many processes: shards split the documents, documents being profiled elsewhere
are left alone, the process that finds every document done merges, and the merge equals one
process's outputs."""

import importlib
import json

import pandas as pd
import pytest
import torch

from circuit_stats.models import tiny_model
from circuit_stats.profiling import profile
from circuit_stats.profiling.writer import ProfileDir
from circuit_stats.scans.sharding import Shard

pytestmark = pytest.mark.hf

PROFILE_MODULE = importlib.import_module("circuit_stats.profiling.profile")  # the package exports the function
STATS = ("sink", "previous_token", "induction", "entropy")
LENGTHS = (30, 9, 44, 17, 25, 12, 38)
BAD = [5, 99, 6]  # id 99 is outside the vocabulary of 64: this document fails


@pytest.fixture
def model(seed):
    return tiny_model("pythia", seed=seed % 1000, initializer_range=0.3, vocab_size=64)


def distinct_docs(seed):
    """Random token documents of ``LENGTHS`` (distinct: their lengths differ), then ``BAD``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 20, (n,), generator=g).tolist() for n in LENGTHS] + [BAD]


@pytest.fixture
def profiled(monkeypatch):
    """The doc indices ``profile_document`` runs on, in order (documents told apart by length)."""
    calls, real = [], PROFILE_MODULE.profile_document

    def counting(model, ids, **kwargs):
        calls.append(LENGTHS.index(len(ids)))
        return real(model, ids, **kwargs)

    monkeypatch.setattr(PROFILE_MODULE, "profile_document", counting)
    return calls


def summary_without_time(path):
    return [line for line in path.read_text().splitlines() if not line.startswith("- time:")]


def test_shards_profile_every_document_once_and_the_last_one_merges(model, seed, tmp_path, profiled):
    docs = distinct_docs(seed)
    single = profile(model, docs, out=tmp_path / "one", statistics=STATS, chunk_size=16, progress=False)
    assert sorted(profiled) == list(range(len(LENGTHS)))
    profiled.clear()
    out = tmp_path / "sharded"
    for i in range(3):
        rows = profile(model, docs, out=out, statistics=STATS, chunk_size=16, progress=False, shard=Shard(i, 3))
        mine = [d for d in range(i, len(docs), 3) if d < len(LENGTHS)]
        if i < 2:  # documents of later shards are not done yet: nothing merged
            assert sorted(rows["doc_index"].unique()) == mine
            assert not (out / "profile.parquet").exists() and not (out / "summary.md").exists()
    assert sorted(profiled) == list(range(len(LENGTHS))), "every document profiled exactly once"
    # the bad document (index 7) belongs to shard 1: its own failures file, merged into failures.json
    assert [f["doc_index"] for f in json.loads((out / "failures.shard-1-of-3.json").read_text())] == [7]
    assert not (out / "failures.shard-0-of-3.json").exists()
    merged = pd.read_parquet(out / "profile.parquet")
    pd.testing.assert_frame_equal(rows, merged)
    pd.testing.assert_frame_equal(merged, single)
    assert (out / "failures.json").read_text() == (tmp_path / "one" / "failures.json").read_text()
    assert summary_without_time(out / "summary.md") == summary_without_time(tmp_path / "one" / "summary.md")
    assert {p.name for p in (out / "plots").iterdir()} == {p.name for p in (tmp_path / "one" / "plots").iterdir()}
    # a committed document's lock file is removed (the failed one's stays)
    assert [p.name for p in (out / ".locks").glob("00*.lock")] == ["0000007.lock"]


def test_a_document_held_by_another_process_is_left_to_it(model, seed, tmp_path, profiled):
    """A run skips the document another process holds and writes no merged outputs; the next run
    profiles only that document, then merges."""
    docs = distinct_docs(seed)[:4]
    out = tmp_path / "out"
    with ProfileDir(out).claim(2) as held:  # another process profiling document 2
        assert held
        rows = profile(model, docs, out=out, statistics=STATS, progress=False)
    assert profiled == [0, 1, 3] and sorted(rows["doc_index"].unique()) == [0, 1, 3]
    assert not (out / "profile.parquet").exists()
    profiled.clear()
    rows = profile(model, docs, out=out, statistics=STATS, progress=False)
    assert profiled == [2]
    assert sorted(rows["doc_index"].unique()) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "profile.parquet"), rows)


def test_a_killed_shard_resumes_with_the_document_in_flight(model, seed, tmp_path, monkeypatch, profiled):
    docs = distinct_docs(seed)
    out = tmp_path / "out"
    real = PROFILE_MODULE.profile_document

    def killed_on_the_second(model, ids, **kwargs):
        if len(profiled) == 1:
            raise KeyboardInterrupt
        return real(model, ids, **kwargs)

    monkeypatch.setattr(PROFILE_MODULE, "profile_document", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        profile(model, docs, out=out, statistics=STATS, progress=False, shard=Shard(0, 2))
    assert ProfileDir(out).done() == {0}
    monkeypatch.setattr(PROFILE_MODULE, "profile_document", real)
    profiled.clear()
    profile(model, docs, out=out, statistics=STATS, progress=False, shard=Shard(1, 2))
    assert not (out / "profile.parquet").exists(), "shard 0 has documents left"
    rows = profile(model, docs, out=out, statistics=STATS, progress=False, shard=Shard(0, 2))
    assert sorted(rows["doc_index"].unique()) == list(range(len(LENGTHS)))
    assert (out / "profile.parquet").exists()


def test_failures_merge_and_leave_once_the_document_is_done(tmp_path):
    store = ProfileDir(tmp_path, Shard(0, 2))
    store.write_failures({0: {"doc_index": 0, "doc_id": "a", "error": "E: x"},
                          2: {"doc_index": 2, "doc_id": "c", "error": "E: y"}})
    ProfileDir(tmp_path, Shard(1, 2)).write_failures({3: {"doc_index": 3, "doc_id": "d", "error": "E: z"}})
    store.write_part(0, pd.DataFrame({"doc_index": [0], "n_tokens": [3]}))  # document 0 succeeded since
    store.write_part(1, pd.DataFrame({"doc_index": [1], "n_tokens": [4]}))
    assert sorted(store.all_failures()) == [2, 3]
    assert store.complete(4) and not store.complete(5)
    _, failures = store.merge()
    assert [f["doc_index"] for f in json.loads((tmp_path / "failures.json").read_text())] == [2, 3] == sorted(failures)


@pytest.mark.parametrize("kwargs, match", [(dict(shard=Shard(0, 2)), "needs out="),
                                           (dict(shard=(0, 2), out="x"), "shard must be")])
def test_bad_shard_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        profile(model, [[1, 2, 3]], progress=False, **kwargs)
