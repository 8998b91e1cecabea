"""Corpus readers: .txt (blocks / file / directory), .jsonl, .parquet, dataset-like objects."""

import json

import pandas as pd
import pytest

from circuit_stats.profiling.corpus import Document, as_documents, documents_from_dataset, read_corpus, sample_corpus_path


def test_txt_blocks_and_whole_files(tmp_path):
    (tmp_path / "a.txt").write_text("first block\nstill first\n\n\nsecond block\n  \nthird\n")
    (tmp_path / "b.txt").write_text("only one\n")
    docs = read_corpus(tmp_path / "a.txt")
    assert [d.text for d in docs] == ["first block\nstill first", "second block", "third"]
    assert [d.doc_id for d in docs] == ["a.txt#0", "a.txt#1", "a.txt#2"]
    whole = read_corpus(tmp_path / "a.txt", split="file")
    assert len(whole) == 1 and whole[0].text.startswith("first block") and whole[0].doc_id == "a.txt"
    assert [d.doc_id for d in read_corpus(tmp_path, split="file")] == ["a.txt", "b.txt"]
    assert len(read_corpus(tmp_path)) == 4


def test_jsonl_with_a_configurable_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"body": "one", "text": 3}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    assert [d.text for d in read_corpus(path, text_field="body")] == ["one", "two"]
    assert [d.doc_id for d in read_corpus(path, text_field="body")] == ["c.jsonl:1", "c.jsonl:3"]
    with pytest.raises(ValueError, match="line 1 has no string field 'text'"):
        read_corpus(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        read_corpus(path)


def test_parquet_column(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"content": ["x y", "z"], "n": [1, 2]}).to_parquet(path)
    assert [d.text for d in read_corpus(path, text_field="content")] == ["x y", "z"]
    with pytest.raises(ValueError, match="no column 'text'"):
        read_corpus(path)


def test_dataset_like_objects():
    class FakeDataset:  # the part of datasets.Dataset the reader uses
        column_names = ["text", "label"]

        def __getitem__(self, key):
            return {"text": ["alpha", "beta"], "label": [0, 1]}[key]

    assert [d.text for d in as_documents(FakeDataset())] == ["alpha", "beta"]
    with pytest.raises(ValueError, match="no column 'body'"):
        documents_from_dataset(FakeDataset(), text_field="body")


def test_lists_of_strings_and_token_ids():
    docs = as_documents(["abc", [1, 2, 3], Document("x", "y")])
    assert docs[0] == Document("0", "abc") and docs[1] == Document("1", [1, 2, 3]) and docs[2].doc_id == "x"
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        as_documents([3.5])


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_corpus(tmp_path / "missing.txt")
    (tmp_path / "e.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=".txt, .jsonl or .parquet"):
        read_corpus(tmp_path / "e.csv")
    with pytest.raises(ValueError, match="split"):
        read_corpus(tmp_path / "e.csv", split="lines")


def test_bundled_sample_corpus():
    docs = read_corpus(sample_corpus_path())
    assert len(docs) >= 8
    assert all(500 < len(d.text.encode()) <= 2048 for d in docs), "documents fit the demo model's context"


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.jsonl"])
def test_a_file_that_is_not_utf8_is_named(tmp_path, name):
    path = tmp_path / name
    text = json.dumps({"text": "caf\u00e9"}, ensure_ascii=False) if name.endswith(".jsonl") else "caf\u00e9 au lait"
    path.write_bytes(text.encode("latin-1"))
    at = text.index("\u00e9")
    with pytest.raises(ValueError, match=rf"texts: .*{name} is not UTF-8 text \(byte {at}:"):
        read_corpus(path)
    if name.endswith(".txt"):
        with pytest.raises(ValueError, match=name):
            read_corpus(tmp_path)  # a directory of .txt files names the bad one


def test_hf_datasets_without_the_package_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # importlib.util.find_spec -> None: not installed
    with pytest.raises(ValueError, match=r"pip install 'circuit-stats\[datasets\]'"):
        read_corpus("hf:wikitext")
