"""Revision catalogs: built-in schedules, local checkpoint folders, mocked hub answers."""

import json
from types import SimpleNamespace

import pytest
from circuit_stats.scans import catalog as rv
from circuit_stats.models.families import tiny_model


def test_builtin_schedules_have_the_published_shape():
    pythia = rv.revisions("EleutherAI/pythia-1b", offline=True)
    assert len(pythia) == 154
    assert [r.revision for r in pythia[:12]] == ["step0", "step1", "step2", "step4", "step8", "step16", "step32",
                                                 "step64", "step128", "step256", "step512", "step1000"]
    assert pythia[-1] == ("step143000", 143000, 143000 * 2_097_152)
    olmo = rv.revisions("allenai/OLMo-1B-0724-hf", offline=True)
    olmoe = rv.revisions("allenai/OLMoE-1B-7B-0924", offline=True)
    assert len(olmoe) == 244 and olmoe[-1].revision == "step1220000-tokens5117B"
    assert olmo[0].revision == "step1000-tokens2B" and olmo[-1].revision == "step1454000-tokens3048B"
    for model in ("EleutherAI/pythia-1b", "allenai/OLMo-1B-0724-hf", "allenai/OLMoE-1B-7B-0924"):
        paper = rv.select_revisions(rv.revisions(model, offline=True), "paper", model)
        assert len(paper) == 10, model  # every scanned revision is named as the schedule names it
        assert all(a.step < b.step for a, b in zip(paper, paper[1:]))
    assert olmoe[0].tokens == 20 * 10**9


def test_revision_specs():
    cat = rv.revisions("EleutherAI/pythia-160m", offline=True)
    assert rv.select_revisions(cat, "all") == cat
    every = rv.select_revisions(cat, "every:50")
    assert every[0].revision == "step0" and every[-1].revision == "step143000" and len(every) == 5
    log = rv.select_revisions(cat, "log:8")
    assert len(log) <= 8 and log[0].revision == "step0" and log[-1].revision == "step143000"
    assert [r.revision for r in rv.select_revisions(cat, "step2000, step1")] == ["step1", "step2000"]
    for bad in ("every:0", "log:x", "step7", "paper"):
        with pytest.raises(ValueError):
            rv.select_revisions(cat, bad, "not/a-model" if bad == "paper" else "")


def _save(dirpath, state=None):
    tiny_model("pythia", attn_implementation="sdpa").save_pretrained(dirpath)
    if state is not None:
        (dirpath / "trainer_state.json").write_text(json.dumps(state))


def test_local_directory_catalog(tmp_path):
    _save(tmp_path / "checkpoint-20", {"global_step": 20, "num_input_tokens_seen": 640})
    _save(tmp_path / "step5")
    _save(tmp_path / "step10-tokens3B")
    (tmp_path / "step7").mkdir()  # no config.json: not a checkpoint
    (tmp_path / "notes").mkdir()
    cat = rv.revisions(tmp_path, tokens_per_step=100)
    assert cat == [("step5", 5, 500), ("step10-tokens3B", 10, 3 * 10**9), ("checkpoint-20", 20, 640)]
    assert rv.revisions(tmp_path)[0].tokens is None  # unknown without --tokens-per-step
    with pytest.raises(ValueError, match="no checkpoint folders"):
        rv.revisions(tmp_path / "notes")


def test_hub_catalog_is_the_truth_and_gaps_show(monkeypatch):
    import huggingface_hub

    names = ["main", "step1000-tokens2B", "step3000-tokens6B", "step2000-tokens4B", "some-branch"]  # 4000.. missing
    monkeypatch.setattr(huggingface_hub, "list_repo_refs",
                        lambda repo_id, **kw: SimpleNamespace(branches=[SimpleNamespace(name=n) for n in names]))
    cat = rv.revisions("allenai/OLMo-1B-0724-hf", offline=False)
    assert [r.revision for r in cat] == ["step1000-tokens2B", "step2000-tokens4B", "step3000-tokens6B"]
    assert cat[1].tokens == 4 * 10**9


def test_hub_unreachable_falls_back_to_the_builtin_schedule(monkeypatch):
    import huggingface_hub

    def down(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "list_repo_refs", down)
    assert len(rv.revisions("EleutherAI/pythia-70m", offline=False)) == 154
    with pytest.raises(ValueError, match="cannot list"):
        rv.revisions("someone/unknown-model", offline=False)


def test_name_parsing():
    assert rv.parse_revision_name("step12-tokens5B") == (12, 5 * 10**9)
    assert rv.parse_revision_name("checkpoint-7") == (7, None)
    assert rv.parse_revision_name("main") is None


def test_skipped_folders_are_named_in_a_warning(tmp_path, caplog):
    _save(tmp_path / "checkpoint-1000")
    _save(tmp_path / "checkpoint-1100 copy")
    _save(tmp_path / "step 1300")
    (tmp_path / "checkpoint-1400").mkdir()  # no config.json
    with caplog.at_level("WARNING", logger=rv.__name__):
        cat = rv.revisions(tmp_path)
    assert [r.revision for r in cat] == ["checkpoint-1000"]
    text = caplog.text
    assert "skipped 3 folder(s)" in text
    assert "checkpoint-1100 copy: its name is not" in text and "step 1300: its name is not" in text
    assert "checkpoint-1400: no config.json" in text


def test_a_link_to_a_checkpoint_of_the_same_directory_is_not_a_revision(tmp_path, caplog):
    _save(tmp_path / "checkpoint-1000", {"num_input_tokens_seen": 1000})
    _save(tmp_path / "checkpoint-1300", {"num_input_tokens_seen": 1300})
    (tmp_path / "checkpoint-1200").symlink_to(tmp_path / "checkpoint-1000")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    _save(elsewhere / "final")
    (tmp_path / "checkpoint-1500").symlink_to(elsewhere / "final")  # a real checkpoint stored elsewhere
    with caplog.at_level("WARNING", logger=rv.__name__):
        cat = rv.revisions(tmp_path)
    assert cat == [("checkpoint-1000", 1000, 1000), ("checkpoint-1300", 1300, 1300), ("checkpoint-1500", 1500, None)]
    assert "checkpoint-1200: a link to checkpoint-1000" in caplog.text
