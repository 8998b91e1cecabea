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


@pytest.mark.parametrize("model,why", [("/no/such/model", "not a hub model id"), ("EMPTY", "holds no config.json")])
def test_a_bogus_model_is_refused_before_loading(tmp_path, capsys, model, why):
    (tmp_path / "t.txt").write_text("some text\n")
    (tmp_path / "EMPTY").mkdir()
    model = str(tmp_path / "EMPTY") if model == "EMPTY" else model
    assert main(["profile", model, "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"model {model}" in err and why in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_hf_texts_without_datasets_exit_2_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    # a hub id that cannot be loaded here: reaching the model would fail differently
    assert main(["profile", "someone/some-model", "--texts", "hf:wikitext", "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'circuit-stats[datasets]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_max_tokens_past_learned_positions_exit_2_naming_the_limit(tmp_path, capsys):
    from circuit_stats.models import tiny_model

    tiny_model("gpt2", n_positions=32, vocab_size=256).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "t.txt").write_text("x" * 100 + "\n")
    argv = ["profile", str(tmp_path / "gpt2"), "--texts", str(tmp_path / "t.txt"), "--tokenizer", "bytes",
            "--out", str(tmp_path / "o"), "--no-plots"]
    assert main(argv + ["--max-tokens", "40"]) == 2
    err = capsys.readouterr().err
    assert "max_tokens=40 needs 40 positions" in err and "for 32 only" in err
    assert not (tmp_path / "o").exists()
    assert main(argv) == 0  # default: cut at the model's 32 positions
    assert set(pd.read_parquet(tmp_path / "o" / "profile.parquet")["n_tokens"]) == {32}


def test_the_same_model_by_relative_and_absolute_path_resumes(tmp_path, capsys, monkeypatch):
    texts = tmp_path / "t.txt"
    texts.write_text("abc abc abc\n")
    argv = ["--texts", str(texts), "--tokenizer", "bytes", "--out", str(tmp_path / "o"), "--no-plots"]
    monkeypatch.chdir(demo_series_dir())
    assert main(["profile", "checkpoint-1600", *argv]) == 0
    assert main(["profile", MODEL, *argv]) == 0
    assert "other settings" not in capsys.readouterr().err


@pytest.mark.parametrize("extra, env, named", [(["--shard", "2/2"], {}, "--shard"), (["--shard", "1-2"], {}, "--shard"),
                                               ([], {"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2")])
def test_a_bad_shard_exits_2_before_the_model_loads(tmp_path, capsys, monkeypatch, extra, env, named):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "t.txt").write_text("abc abc\n")
    # a hub id that cannot be loaded here: reaching the model would fail differently
    assert main(["profile", "someone/some-model", "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o"),
                 *extra]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_shards_exit_1_for_their_failures_and_the_merge_for_all(tmp_path, capsys):
    """Shard 0 (no failure, shard 1 not done): exit 0, nothing merged; shard 1 (an empty document):
    exit 1, then every document is done and it merges; shard 0 again: exit 1 (the merge holds the
    failure)."""
    texts = tmp_path / "t.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("hello hello", "", "abc abc abc", "xyz")))
    out = tmp_path / "o"
    argv = ["profile", MODEL, "--texts", str(texts), "--out", str(out), "--no-plots", "--statistics", "sink"]
    assert main(argv + ["--shard", "0/2"]) == 0
    printed = capsys.readouterr().out
    assert "shard 0/2: profiled 2 documents" in printed and "2 documents left to other processes" in printed
    assert not (out / "profile.parquet").exists()
    assert main(argv + ["--shard", "1/2"]) == 1
    captured = capsys.readouterr()
    assert "every document done" in captured.out and "1 documents failed" in captured.err
    assert [f["doc_index"] for f in json.loads((out / "failures.json").read_text())] == [1]
    assert sorted(pd.read_parquet(out / "profile.parquet")["doc_index"].unique()) == [0, 2, 3]
    assert main(argv + ["--shard", "0/2"]) == 1 and "failures.json" in capsys.readouterr().err


def test_torchrun_two_processes_profile_every_document_once(tmp_path, monkeypatch):
    """``torchrun --nproc-per-node 2``: each document is profiled by exactly one rank, the last
    rank to finish merges, and the merged outputs equal one process's."""
    import os
    import re
    import subprocess
    import sys

    corpus = " ".join(json.loads(line)["text"] for line in
                      (demo_series_dir().parents[1] / "data" / "sample_corpus.jsonl").read_text().splitlines())
    texts = tmp_path / "t.jsonl"
    lengths = (40, 310, 90, 520, 150, 12)  # very different lengths: none pads another
    texts.write_text("".join(json.dumps({"text": corpus[i * 600:i * 600 + n]}) + "\n" for i, n in enumerate(lengths)))

    def argv(out):
        return ["profile", MODEL, "--texts", str(texts), "--out", str(out), "--statistics", "sink,induction,distance",
                "--bins", "0,8,64,inf", "--chunk-size", "128"]

    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "0", "-m", "circuit_stats.cli", "-v", *argv(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "shard 0/2: profiled 3 documents" in run.stdout and "shard 1/2: profiled 3 documents" in run.stdout
    assert "every document done" in run.stdout
    profiled = [int(i) for i in re.findall(r"document (\d+) \(\S+\) profiled", run.stderr)]
    assert sorted(profiled) == list(range(len(lengths))), "every document profiled exactly once"

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert main(argv(tmp_path / "one")) == 0
    two, one = tmp_path / "two", tmp_path / "one"
    merged = pd.read_parquet(two / "profile.parquet")
    assert merged.drop_duplicates("doc_index")["n_tokens"].tolist() == list(lengths)
    pd.testing.assert_frame_equal(merged, pd.read_parquet(one / "profile.parquet"))
    assert not (two / "failures.json").exists()

    def summary(path):
        return [line for line in path.read_text().splitlines() if not line.startswith("- time:")]

    assert summary(two / "summary.md") == summary(one / "summary.md")
    assert {p.name for p in (two / "plots").iterdir()} == {p.name for p in (one / "plots").iterdir()}


def test_two_unsharded_processes_on_one_directory_share_the_documents(tmp_path):
    """Two plain runs started together on one --out: the document locks give each document to one
    of them (however their timing falls), and the outputs are complete."""
    import os
    import re
    import subprocess
    import sys

    texts = tmp_path / "t.txt"
    texts.write_text("\n\n".join(f"{i} the mill by the river " * (6 + 3 * i) for i in range(8)) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "circuit_stats.cli", "-v", "profile", MODEL, "--texts", str(texts), "--out", str(out),
           "--statistics", "sink,induction", "--no-plots"]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in logs]
    profiled = [int(i) for _, err in logs for i in re.findall(r"document (\d+) \(\S+\) profiled", err)]
    assert sorted(profiled) == list(range(8)), "every document profiled by exactly one of the two"
    assert sorted(pd.read_parquet(out / "profile.parquet")["doc_index"].unique()) == list(range(8))
    assert any("every document done" in printed for printed, _ in logs)
