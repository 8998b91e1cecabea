"""Scans: resumption, kills between writes, failures and the stop rule, concurrent writers,
file modes, refinement, the hub loading path."""

import json
import os
import threading

import pandas as pd
import pytest
import torch
from scan_fakes import CATALOG, fake_scan, fake_scores

import circuit_stats.scans.loading as loading_mod
from circuit_stats.models.families import tiny_model
from circuit_stats.scans.emergence import largest_jump
from circuit_stats.scans.settings import SettingsError

pytestmark = pytest.mark.hf  # builds a Hugging Face model (hub loading path); also run against the oldest transformers


def table(out):
    return pd.read_parquet(out / "results.parquet")  # the parts read as one dataset


def test_scan_is_resumable_after_a_kill(tmp_path):
    score, calls = fake_scores(50)

    def dies_on_third(rev, fetched):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies mid-scan
        return score(rev, fetched)

    selected = CATALOG[::10]
    with pytest.raises(KeyboardInterrupt):
        fake_scan(tmp_path, dies_on_third).run(selected)
    assert sorted(table(tmp_path).revision.unique()) == ["step0", "step10"] and len(table(tmp_path)) == 16
    assert not list(tmp_path.rglob("*.tmp"))
    outcome = fake_scan(tmp_path, score).run(selected)
    assert calls[2:] == [r.revision for r in selected[2:]], "finished revisions are not scanned again"
    assert outcome.scanned == [r.revision for r in selected[2:]], "scanned counts this run only"
    assert outcome.already_done == ["step0", "step10"] and outcome.ok
    out = outcome.results
    assert out.revision.nunique() == 10 and list(out.columns[:5]) == ["model", "revision", "step", "tokens", "protocol"]
    assert out.tokens.dtype == "Int64"


class Killed(BaseException):
    """The process dying at one write."""


REAL = {"replace": os.replace, "unlink": os.unlink}


def patch_writes(monkeypatch, on_write):
    """Route every file move and removal (os.replace, os.unlink, Path.unlink) through ``on_write``."""
    for name, real in REAL.items():
        monkeypatch.setattr(os, name, lambda *a, _real=real, **k: (on_write(), _real(*a, **k))[1])


def count_writes(monkeypatch, out, run) -> int:
    n = {"writes": 0}

    def count():
        n["writes"] += 1

    patch_writes(monkeypatch, count)
    try:
        run(out)
    finally:
        monkeypatch.undo()
    return n["writes"]


def flaky_then_fine(attempt):
    score, _ = fake_scores(30)

    def flaky(rev, fetched):
        if attempt == 0 and rev.revision == "step20":
            raise OSError("404")
        return score(rev, fetched)

    return flaky


@pytest.mark.parametrize("scenario", ["fresh", "failed-then-fine"])
def test_a_kill_between_any_two_writes_loses_nothing(tmp_path, monkeypatch, scenario):
    """Kill the run at every write in turn (including the removal of a stale failure record),
    check the table is whole at that moment, then resume: every revision exactly once."""
    selected = CATALOG[:50:10]

    def prepare(out):
        if scenario == "failed-then-fine":
            fake_scan(out, flaky_then_fine(0)).run(selected)

    def resume(out):
        fake_scan(out, flaky_then_fine(1)).run(selected)

    def both(out):
        prepare(out)
        resume(out)

    total = count_writes(monkeypatch, tmp_path / "count", both) - count_writes(monkeypatch, tmp_path / "count2", prepare)
    assert total >= (len(selected) if scenario == "fresh" else 3)  # parts, status (+ the stale record's removal)
    for k in range(total):
        out = tmp_path / f"kill{k}"
        prepare(out)
        seen = {"n": 0}

        def dies():
            if seen["n"] == k:
                raise Killed
            seen["n"] += 1

        patch_writes(monkeypatch, dies)
        with pytest.raises(Killed):
            resume(out)
        monkeypatch.undo()
        if (out / "results.parquet").is_dir() and list((out / "results.parquet").glob("*.parquet")):
            mid = table(out)
            assert (mid.groupby("revision").size() == 8).all(), f"kill at write {k}: a partial revision"
        resume(out)
        final = table(out)
        assert sorted(final.revision.unique()) == sorted(r.revision for r in selected), k
        assert len(final) == 8 * len(selected), f"kill at write {k}: a revision lost or duplicated"
        assert not (out / "failed").exists() or not list((out / "failed").glob("*.json")), k
        # a kill may leave a temporary file behind, always hidden (the dataset reader skips it)
        assert all(p.name.startswith(".") for p in out.rglob("*.tmp"))


def test_failed_revisions_are_recorded_and_the_scan_goes_on(tmp_path):
    score, _ = fake_scores(50)

    def flaky(rev, fetched):
        if rev.revision == "step20":
            raise OSError("404 revision not found")
        return score(rev, fetched)

    outcome = fake_scan(tmp_path, flaky).run(CATALOG[::10][:4])
    assert sorted(outcome.results.revision.unique()) == ["step0", "step10", "step30"]
    assert not outcome.ok and list(outcome.failed) == ["step20"] and "404" in outcome.failed["step20"]
    record = json.loads((tmp_path / "failed" / "step20.json").read_text())
    assert record["revision"] == "step20" and "404" in record["error"]
    assert json.loads((tmp_path / "status.json").read_text())["failed"] == {"step20": "OSError: 404 revision not found"}


def test_consecutive_failures_with_one_error_stop_the_run(tmp_path):
    score, calls = fake_scores(50)

    def offline(rev, fetched):
        if rev.step >= 20:
            raise OSError(f"cannot reach the hub for {rev.revision}")  # the same cause, worded per revision
        return score(rev, fetched)

    outcome = fake_scan(tmp_path, offline, max_consecutive_failures=3).run(CATALOG[::10])
    assert outcome.stopped and "3 consecutive" in outcome.stopped and "cannot reach the hub" in outcome.stopped
    assert list(outcome.failed) == ["step20", "step30", "step40"], "nothing tried after the third failure"

    def varied(rev, fetched):
        if rev.step in (20, 30, 40):
            raise ValueError(f"bad weights #{rev.step // 10}")  # different errors: the run goes on
        return score(rev, fetched)

    outcome = fake_scan(tmp_path / "b", varied, max_consecutive_failures=2).run(CATALOG[::10])
    assert outcome.stopped is None and len(outcome.failed) == 3 and len(outcome.scanned) == 7


def test_settings_mismatch_names_the_setting_and_writes_nothing(tmp_path):
    score, _ = fake_scores(50)
    fake_scan(tmp_path, score, protocol_options={"seq_len": 16}).run(CATALOG[:1])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SettingsError, match=r"options 'seq_len': 16 there, 32 here"):
        fake_scan(tmp_path, score, protocol_options={"seq_len": 32})
    with pytest.raises(SettingsError, match=r"dtype: None there, 'float16' here"):
        fake_scan(tmp_path, score, protocol_options={"seq_len": 16}, dtype="float16")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    # options equal after resolving defaults are the same scan
    fake_scan(tmp_path, score, protocol_options={"seq_len": 16, "seed": 0}).run(CATALOG[1:2])


@pytest.mark.parametrize("bad, match", [
    (dict(protocol_options={"n_seqs": 2}), "--option: unknown repeat options"),
    (dict(protocol_options={"seq_len": "abc"}), "--option: repeat option 'seq_len' must be int"),
    (dict(protocol_options={"thresholds": {"inductoin": 0.5}}), "--option: unknown keys"),
    (dict(dtype="float8"), "--dtype"),
    (dict(batch_size=0), "--batch-size"),
    (dict(prefetch=-1), "--prefetch"),
    (dict(max_consecutive_failures=0), "--max-consecutive-failures"),
    (dict(device="gpu7"), "--device"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, bad, match):
    score, calls = fake_scores(50)
    with pytest.raises(SettingsError, match=match):
        fake_scan(tmp_path / "out", score, **bad)
    assert not (tmp_path / "out").exists() and not calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(tmp_path):
    score, _ = fake_scores(50)
    with pytest.raises(SettingsError, match="--device 'cuda': no CUDA GPU"):
        fake_scan(tmp_path / "out", score, device="cuda")
    assert not (tmp_path / "out").exists()


def test_files_are_readable_by_others(tmp_path):
    score, _ = fake_scores(50)
    old = os.umask(0o022)
    try:
        fake_scan(tmp_path, score).run(CATALOG[:2])
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert files and all(p.stat().st_mode & 0o777 == 0o644 for p in files), {p.name: oct(p.stat().st_mode) for p in files}


def test_concurrent_scans_into_one_directory_never_lose_or_repeat_a_revision(tmp_path):
    score, calls = fake_scores(50, delay=0.05)
    selected = CATALOG[:24]
    outcomes = []

    def worker(revs):
        outcomes.append(fake_scan(tmp_path, score).run(revs))

    # two scans of the same revisions, and a third of an overlapping list, at once
    threads = [threading.Thread(target=worker, args=(revs,)) for revs in (selected, selected, selected[12:])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == sorted(r.revision for r in selected), "each revision scored exactly once"
    final = table(tmp_path)
    assert final.groupby("revision").size().eq(8).all() and final.revision.nunique() == 24
    assert sum(len(o.scanned) for o in outcomes) == 24


def test_refine_bisects_down_to_adjacent_checkpoints(tmp_path):
    score, calls = fake_scores(63)
    s = fake_scan(tmp_path, score)
    s.run(CATALOG[::20])  # 0, 20, 40, 60, 80: the jump hides between 60 and 80
    assert largest_jump(s.results())["before"] == "step60"
    n = len(calls)
    refined = s.refine()
    jump = largest_jump(s.results())
    assert (jump["before"], jump["after"]) == ("step62", "step63")
    assert len(refined) == len(calls) - n <= 6  # bisection, not a sweep of the 19 in between


def test_hub_loading_downloads_the_revision_then_loads_the_snapshot(monkeypatch, tmp_path):
    import huggingface_hub
    from transformers import AutoModelForCausalLM

    seen = {}
    snapshot = tmp_path / "snapshots" / "abc123"

    def fake_snapshot_download(repo_id, **kw):
        seen.update(repo_id=repo_id, **kw)
        return str(snapshot)

    def fake_from_pretrained(name, **kw):
        seen.update(loaded=name, **kw)
        return tiny_model("pythia", attn_implementation=kw["attn_implementation"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    fetched = loading_mod.fetch_revision("EleutherAI/pythia-1b", "step3000", ["model.safetensors"])
    assert fetched == (snapshot, "abc123")
    assert seen["repo_id"] == "EleutherAI/pythia-1b" and seen["revision"] == "step3000"
    assert seen["allow_patterns"] == ["*.json", "model.safetensors"]
    loading_mod.load_checkpoint(fetched.path, dtype=torch.float16)
    assert seen["loaded"] == snapshot and seen["attn_implementation"] == "circuit_stats"
    assert seen["dtype"] == torch.float16


def test_delete_after_removes_the_cached_revision(monkeypatch):
    import huggingface_hub

    deleted = []

    class Strategy:
        expected_freed_size = 123

        def execute(self):
            deleted.append(True)

    class Cache:
        repos = [type("R", (), {"repo_id": "EleutherAI/pythia-1b",
                                "revisions": [type("V", (), {"commit_hash": "abc"})()]})()]

        def delete_revisions(self, *hashes):
            assert hashes == ("abc",)
            return Strategy()

    monkeypatch.setattr(huggingface_hub, "scan_cache_dir", lambda: Cache())
    assert loading_mod.delete_cached_revision("EleutherAI/pythia-1b", "abc") == 123 and deleted
    assert loading_mod.delete_cached_revision("EleutherAI/pythia-1b", "zzz") == 0


def test_nan_scores_from_any_scorer_fail_the_revision_instead_of_entering_the_table(tmp_path):
    score, _ = fake_scores(50)

    def nan_at_step30(rev, fetched):
        df = score(rev, fetched)
        if rev.revision == "step30":  # e.g. a custom scorer on a checkpoint with NaN weights
            df.loc[df.index[-1], "induction"] = float("nan")
        return df

    outcome = fake_scan(tmp_path, nan_at_step30).run(CATALOG[::10][:4])
    assert sorted(outcome.results.revision.unique()) == ["step0", "step10", "step20"]
    assert list(outcome.failed) == ["step30"] and outcome.failed["step30"].startswith("NonFiniteError: scores: ['induction']")
    assert json.loads((tmp_path / "failed" / "step30.json").read_text())["error"].startswith("NonFiniteError")
