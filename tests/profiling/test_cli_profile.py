"""`circuit-stats profile` on the bundled demo model: files, exit status, tokenizer choice."""

import json

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


def test_a_model_without_tokenizer_needs_an_explicit_choice(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("some text\n")
    assert main(["profile", MODEL, "--texts", str(texts), "--out", str(tmp_path / "o")]) == 2
    assert "--tokenizer bytes" in capsys.readouterr().err
    assert main(["profile", MODEL, "--texts", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 2


def test_a_document_with_nan_activations_fails_with_exit_status_1(tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight[ord("Z")] = float("nan")  # the byte Z has a NaN embedding
    model.save_pretrained(tmp_path / "nan-model")
    clean, dirty = "the mill and the mill and the mill", "the Zmill and the mill"
    (tmp_path / "clean.txt").write_text(clean + "\n")
    (tmp_path / "both.txt").write_text(f"{clean}\n\n{dirty}\n")
    args = ["--tokenizer", "bytes", "--bins", "0,8,inf", "--no-plots"]
    assert main(["profile", str(tmp_path / "nan-model"), "--texts", str(tmp_path / "clean.txt"),
                 "--out", str(tmp_path / "clean"), *args]) == 0
    assert main(["profile", str(tmp_path / "nan-model"), "--texts", str(tmp_path / "both.txt"),
                 "--out", str(tmp_path / "both"), *args]) == 1
    assert "1 documents failed" in capsys.readouterr().err
    failures = json.loads((tmp_path / "both" / "failures.json").read_text())
    assert [f["doc_index"] for f in failures] == [1] and failures[0]["error"].startswith("NonFiniteError")
    summary = (tmp_path / "both" / "summary.md").read_text()
    assert "1 profiled, 1 failed" in summary
    rows = lambda text: [line for line in text.splitlines() if line.startswith("| ") and "layer" not in line]
    assert rows(summary) == rows((tmp_path / "clean" / "summary.md").read_text())
