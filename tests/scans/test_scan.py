"""Scans: resumption, failures, refinement, the hub loading path."""

import json

import pandas as pd
import pytest
import torch
from circuit_stats.models.families import tiny_model
from circuit_stats.scans.catalog import Revision

import circuit_stats.scans.files as files_mod
import circuit_stats.scans.loading as loading_mod
from circuit_stats.scans.emergence import largest_jump
from circuit_stats.scans.scan import Scan

pytestmark = pytest.mark.hf  # also run against the oldest supported transformers (.ci/run)

CATALOG = [Revision(f"step{s}", s, s * 1000) for s in range(0, 100)]


def fake_scores(jump_at: int, n_layers: int = 2, n_heads: int = 4):
    """A scorer whose induction fraction jumps from 0 to 3/8 at step ``jump_at``."""
    calls = []

    def score(rev: Revision) -> pd.DataFrame:
        calls.append(rev.revision)
        rows = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        df = pd.DataFrame(rows, columns=["layer", "head"])
        df["induction"] = [0.9 if (rev.step >= jump_at and layer == 1 and h < 3) else 0.01 for layer, h in rows]
        df["label"] = ["induction" if v > 0.4 else "unclassified" for v in df["induction"]]
        return df

    return score, calls


def test_scan_is_resumable_after_a_kill(tmp_path):
    score, calls = fake_scores(50)
    killed = {"n": 0}

    def dies_on_third(rev):
        if len(calls) == 2:
            killed["n"] += 1
            raise KeyboardInterrupt  # the process dies mid-scan
        return score(rev)

    selected = CATALOG[::10]
    s = Scan("fake/model", tmp_path, "repeat", catalog=CATALOG, score_fn=dies_on_third, progress=False)
    with pytest.raises(KeyboardInterrupt):
        s.run(selected)
    table = pd.read_parquet(tmp_path / "results.parquet")  # intact, holding what finished
    assert sorted(table.revision.unique()) == ["step0", "step10"] and len(table) == 16
    assert not list(tmp_path.rglob("*.tmp"))
    s2 = Scan("fake/model", tmp_path, "repeat", catalog=CATALOG, score_fn=score, progress=False)
    out = s2.run(selected)
    assert calls[2:] == [r.revision for r in selected[2:]], "finished revisions are not scanned again"
    assert out.revision.nunique() == 10 and list(out.columns[:5]) == ["model", "revision", "step", "tokens", "protocol"]
    assert out.tokens.dtype == "Int64"


def test_a_crash_while_writing_never_corrupts_the_table(tmp_path, monkeypatch):
    score, _ = fake_scores(50)
    s = Scan("fake/model", tmp_path, "repeat", catalog=CATALOG, score_fn=score, progress=False)
    s.run(CATALOG[:2])
    before = pd.read_parquet(tmp_path / "results.parquet")
    real = files_mod.os.replace

    def crash(src, dst):
        if str(dst).endswith("results.parquet"):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(files_mod.os, "replace", crash)
    with pytest.raises(OSError):
        s.scan_one(CATALOG[5])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "results.parquet"), before)
    assert not list(tmp_path.rglob("*.tmp"))


def test_failed_revisions_are_recorded_and_the_scan_goes_on(tmp_path):
    score, _ = fake_scores(50)

    def flaky(rev):
        if rev.revision == "step20":
            raise OSError("404 revision not found")
        return score(rev)

    s = Scan("fake/model", tmp_path, "repeat", catalog=CATALOG, score_fn=flaky, progress=False)
    out = s.run(CATALOG[::10][:4])
    assert sorted(out.revision.unique()) == ["step0", "step10", "step30"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["revisions"]["step20"]["status"] == "failed"
    assert "404" in manifest["revisions"]["step20"]["error"]


def test_settings_mismatch_on_resume_is_refused(tmp_path):
    score, _ = fake_scores(50)
    Scan("fake/model", tmp_path, "repeat", catalog=CATALOG, score_fn=score, progress=False).run(CATALOG[:1])
    with pytest.raises(ValueError, match="other settings"):
        Scan("fake/model", tmp_path, "natural", catalog=CATALOG, score_fn=score, progress=False)


def test_refine_bisects_down_to_adjacent_checkpoints(tmp_path):
    score, calls = fake_scores(63)
    s = Scan("fake/model", tmp_path, "repeat", catalog=CATALOG, score_fn=score, progress=False)
    s.run(CATALOG[::20])  # 0, 20, 40, 60, 80: the jump hides between 60 and 80
    assert largest_jump(s.results())["before"] == "step60"
    n = len(calls)
    refined = s.refine()
    jump = largest_jump(s.results())
    assert (jump["before"], jump["after"]) == ("step62", "step63")
    assert len(refined) == len(calls) - n <= 6  # bisection, not a sweep of the 19 in between


def test_hub_loading_passes_the_revision(monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}

    def fake_from_pretrained(name, **kw):
        seen.update(name=name, **kw)
        return tiny_model("pythia", attn_implementation=kw["attn_implementation"])

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    loading_mod.load_revision("EleutherAI/pythia-1b", "step3000", dtype=torch.float16)
    assert seen == {"name": "EleutherAI/pythia-1b", "revision": "step3000", "attn_implementation": "circuit_stats",
                    "dtype": torch.float16}


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
