"""Identical weights across revisions: local copies and mocked hub metadata."""

import shutil
from types import SimpleNamespace

import huggingface_hub
import pandas as pd
import pytest
from scan_fakes import CATALOG, fake_scan, fake_scores
from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

from circuit_stats.cli import main
from circuit_stats.demo.series import demo_series_dir
from circuit_stats.scans.catalog import pythia_schedule
from circuit_stats.scans.emergence import largest_jump, summarise
from circuit_stats.scans.integrity import duplicate_groups, weight_files, weights_digest
from circuit_stats.scans.scan import Scan


def local_series(tmp_path):
    """checkpoint-0, -100 and -1600 of the demo, and a checkpoint-50 holding checkpoint-1600's
    weights (a branch serving the final model, as in Pythia issue 205)."""
    root = tmp_path / "series"
    for name in ("checkpoint-0", "checkpoint-100", "checkpoint-1600"):
        shutil.copytree(demo_series_dir() / name, root / name)
    shutil.copytree(demo_series_dir() / "checkpoint-50", root / "checkpoint-50")
    shutil.copy(root / "checkpoint-1600" / "model.safetensors", root / "checkpoint-50" / "model.safetensors")
    return root


def test_weight_files_are_the_model_weights():
    names = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "pytorch_model.bin", "optimizer.pt", "sub/x.safetensors"]
    assert weight_files(names) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert weight_files(["pytorch_model.bin", "training_args.bin", "optimizer.pt"]) == ["pytorch_model.bin"]


def test_duplicate_groups_keep_the_latest_revision():
    digests = {"s0": "A", "s1": "A", "s2": "B", "s3": "A", "s4": None, "s5": None}
    assert duplicate_groups(digests, ["s0", "s1", "s2", "s3", "s4", "s5"]) == {"s0": "s3", "s1": "s3"}


def test_local_copies_are_scanned_once_and_marked(tmp_path):
    root = local_series(tmp_path)
    assert weights_digest(root, "checkpoint-50") == weights_digest(root, "checkpoint-1600")
    assert weights_digest(root, "checkpoint-0") != weights_digest(root, "checkpoint-100")
    score, calls = fake_scores(1000)
    s = Scan(root, tmp_path / "out", "repeat", score_fn=score, fetch_fn=lambda rev: None, progress=False)
    outcome = s.run(s.catalog)
    assert sorted(calls) == ["checkpoint-0", "checkpoint-100", "checkpoint-1600"], "identical weights scored once"
    assert outcome.duplicates == {"checkpoint-50": "checkpoint-1600"}
    table = pd.read_parquet(tmp_path / "out" / "results.parquet")
    marked = table.drop_duplicates("revision").set_index("revision")["duplicate_of"]
    assert marked["checkpoint-50"] == "checkpoint-1600" and marked.drop("checkpoint-50").isna().all()
    # the report leaves the duplicate out of onsets and jumps, and lists it
    summary = summarise(table)
    assert summary["duplicates"] == {"checkpoint-50": "checkpoint-1600"}
    assert [r["revision"] for r in summary["revisions"]] == ["checkpoint-0", "checkpoint-100", "checkpoint-1600"]
    assert summary["classes"]["induction"]["onset"]["revision"] == "checkpoint-1600"  # not the mislabelled 50


def hub_answers(monkeypatch, weights):
    """Mock ``HfApi.model_info``: ``weights`` maps revision -> LFS sha256 of model.safetensors."""
    asked = []

    def model_info(self, repo_id, revision=None, files_metadata=False, **kw):
        asked.append((repo_id, revision, files_metadata))
        if revision not in weights:
            raise huggingface_hub.errors.RevisionNotFoundError(f"{revision} not found", response=None)
        siblings = [RepoSibling("config.json", 500, "b1", None),
                    RepoSibling("model.safetensors", 10, "b2", BlobLfsInfo(10, weights[revision], 128))]
        return SimpleNamespace(siblings=siblings, sha="c" * 40)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **k: pytest.fail("the integrity check must not download"))
    return asked


PYTHIA = {"step0": "f" * 64, "step1": "f" * 64, "step2": "a" * 64, "step4": "b" * 64, "step143000": "f" * 64}


def test_hub_duplicates_come_from_file_metadata(monkeypatch):
    asked = hub_answers(monkeypatch, PYTHIA)
    assert weights_digest("EleutherAI/pythia-2.8b", "step0") == weights_digest("EleutherAI/pythia-2.8b", "step143000")
    assert weights_digest("EleutherAI/pythia-2.8b", "step2") != weights_digest("EleutherAI/pythia-2.8b", "step4")
    assert all(files_metadata for _, _, files_metadata in asked)


def test_cli_revisions_check_prints_the_groups(monkeypatch, capsys):
    hub_answers(monkeypatch, PYTHIA)
    code = main(["revisions", "EleutherAI/pythia-2.8b", "--offline", "--revisions", "step0,step1,step2,step4,step143000",
                 "--check"])
    out = capsys.readouterr().out
    assert code == 0
    assert "identical weights: step0, step1 = step143000" in out
    assert "5 revisions checked: 2 duplicates in 1 group" in out


def test_hub_scan_skips_identical_revisions(monkeypatch, tmp_path):
    hub_answers(monkeypatch, PYTHIA)
    score, calls = fake_scores(2)
    catalog = [r for r in pythia_schedule() if r.revision in PYTHIA]
    s = Scan("EleutherAI/pythia-2.8b", tmp_path, "repeat", catalog=catalog, score_fn=score, fetch_fn=lambda rev: None,
             progress=False)
    outcome = s.run(catalog)
    assert sorted(calls) == ["step143000", "step2", "step4"]
    assert outcome.duplicates == {"step0": "step143000", "step1": "step143000"}


def test_refine_never_bisects_between_identical_weights(tmp_path):
    """Branches step64..step79 serve step80's weights; the real jump is at step63."""
    score, calls = fake_scores(63)

    def digest(rev):
        return "sha-step80" if 64 <= rev.step <= 80 else f"sha-{rev.revision}"

    s = fake_scan(tmp_path, score, digest_fn=digest)
    s.run(CATALOG[::20])
    s.refine()
    assert not [c for c in calls if 64 <= int(c[4:]) < 80], "a revision with step80's weights was scanned"
    results = s.results()
    jump = largest_jump(results[results.duplicate_of.isna()])
    assert (jump["before"], jump["after"]) == ("step62", "step63")
    marked = results.drop_duplicates("revision").set_index("revision")["duplicate_of"].dropna()
    assert len(marked) and set(marked) == {"step80"}


def test_hub_fetch_downloads_only_the_identified_weight_files(monkeypatch, tmp_path):
    hub_answers(monkeypatch, PYTHIA)
    asked = {}

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        asked.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(tmp_path / "snapshots" / "c0ffee")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    catalog = [r for r in pythia_schedule() if r.revision == "step2"]
    s = Scan("EleutherAI/pythia-2.8b", tmp_path / "out", "repeat", catalog=catalog, progress=False)
    fetched = s.fetch_fn(catalog[0])
    assert asked == {"repo_id": "EleutherAI/pythia-2.8b", "revision": "step2",
                     "allow_patterns": ["*.json", "model.safetensors"]}
    assert fetched.commit == "c0ffee"
