"""`circuit-stats profile` on the bundled demo model: files, exit status, tokenizer choice."""

import json
import shutil

import pandas as pd
import pytest

from circuit_stats.cli import main
from circuit_stats.demo.series import demo_series_dir

pytestmark = pytest.mark.hf

MODEL = str(demo_series_dir() / "checkpoint-1600")


def test_profile_command_writes_rows_summary_and_plots(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("abc abc abc abc abc abc\n\nThe river ran past the mill, past the mill and the bridge.\n")
    out = tmp_path / "out"
    rc = main(["profile", MODEL, "--texts", str(texts), "--tokenizer", "bytes", "--out", str(out),
               "--bins", "0,8,32,inf", "--statistics", "sink,induction,distance", "--chunk-size", "16"])
    assert rc == 0
    df = pd.read_parquet(out / "profile.parquet")
    assert sorted(df["doc_index"].unique()) == [0, 1] and set(df["bin"]) == {0, 1, 2}
    assert list(df.columns[-3:]) == ["sink", "induction", "distance"]
    assert (out / "summary.md").read_text().startswith("# Attention profile")
    assert {p.name for p in (out / "plots").iterdir()} == {"position_sink.png", "position_induction.png",
                                                            "position_distance.png", "heads.png"}
    assert "profiled 2 documents" in capsys.readouterr().out


def test_failed_documents_give_exit_status_1(tmp_path, capsys):
    texts = tmp_path / "t.jsonl"
    texts.write_text(json.dumps({"text": "hello hello"}) + "\n" + json.dumps({"text": ""}) + "\n")
    rc = main(["profile", MODEL, "--texts", str(texts), "--tokenizer", "bytes", "--out", str(tmp_path / "o"),
               "--no-plots"])
    assert rc == 1
    assert "1 documents failed" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "failures.json").read_text())[0]["doc_index"] == 1


def test_the_bundled_model_profiles_with_its_own_tokenizer(tmp_path):
    """The bundled checkpoints ship a byte-level tokenizer: no --tokenizer gives the bytes' numbers."""
    texts = tmp_path / "t.txt"
    texts.write_text("naïve abc abc abc ∑ abc\n")
    for name, extra in (("own", []), ("bytes", ["--tokenizer", "bytes"])):
        assert main(["profile", MODEL, "--texts", str(texts), "--out", str(tmp_path / name), "--no-plots",
                     "--statistics", "sink,induction"] + extra) == 0
    own, byte = (pd.read_parquet(tmp_path / n / "profile.parquet") for n in ("own", "bytes"))
    assert own["n_tokens"].iloc[0] == len("naïve abc abc abc ∑ abc".encode())
    pd.testing.assert_frame_equal(own, byte)


def test_a_model_without_tokenizer_needs_an_explicit_choice(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("some text\n")
    bare = tmp_path / "bare"
    shutil.copytree(MODEL, bare, ignore=shutil.ignore_patterns("tokenizer*"))
    assert main(["profile", str(bare), "--texts", str(texts), "--out", str(tmp_path / "o")]) == 2
    assert "--tokenizer bytes" in capsys.readouterr().err
    assert main(["profile", MODEL, "--texts", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 2
