"""Corpus readers: documents from .txt, .jsonl, .parquet files or a Hugging Face ``datasets`` dataset."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import pandas as pd

SPLITS = ("blocks", "file")


@dataclass(frozen=True)
class Document:
    """One document: a stable id (file and block / line / row) and its text (or token ids)."""

    doc_id: str
    text: Union[str, Sequence[int]]


def sample_corpus_path() -> Path:
    """The bundled sample corpus (a .jsonl of short documents written for the project)."""
    return Path(str(resources.files("circuit_stats").joinpath("data/sample_corpus.jsonl")))


def read_corpus(source: Union[str, Path], *, text_field: str = "text", split: str = "blocks",
                dataset_split: str = "train", dataset_config: Optional[str] = None) -> list[Document]:
    """Documents from ``source``:

    * a ``.txt`` file: one document per blank-line block (``split="blocks"``) or the whole file
      (``split="file"``); a directory: every ``*.txt`` in it, sorted, each read the same way;
    * a ``.jsonl`` file: one document per line, the string in ``text_field``;
    * a ``.parquet`` file: one document per row, the column ``text_field``;
    * ``"hf:NAME"``: the Hugging Face dataset NAME (split ``dataset_split``, config
      ``dataset_config``), column ``text_field``; needs ``pip install datasets``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(source, str) and source.startswith("hf:"):
        return read_hf_dataset(source[3:], text_field=text_field, split=dataset_split, config=dataset_config)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"texts: {path} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"texts: directory {path} holds no .txt files")
        return [d for f in files for d in read_txt(f, split=split)]
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return read_txt(path, split=split)
    if suffix == ".jsonl":
        return read_jsonl(path, text_field=text_field)
    if suffix == ".parquet":
        return read_parquet(path, text_field=text_field)
    raise ValueError(f"texts: {path} must be a .txt, .jsonl or .parquet file, a directory of .txt files "
                     "or hf:DATASET_NAME")


def read_utf8(path: Path) -> str:
    """The text of ``path``; a ValueError naming the file when it is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"texts: {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None


def read_txt(path: Path, *, split: str = "blocks") -> list[Document]:
    text = read_utf8(path)
    if split == "file":
        return [Document(path.name, text)] if text.strip() else []
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return [Document(f"{path.name}#{i}", b) for i, b in enumerate(blocks)]


def read_jsonl(path: Path, *, text_field: str = "text") -> list[Document]:
    docs = []
    for n, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise ValueError(f"texts: {path} line {n} is not JSON: {err}") from None
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise ValueError(f"texts: {path} line {n} has no string field {text_field!r} "
                             f"(set the field with text_field= / --text-field)")
        docs.append(Document(f"{path.name}:{n}", row[text_field]))
    return docs


def read_parquet(path: Path, *, text_field: str = "text") -> list[Document]:
    df = pd.read_parquet(path)
    if text_field not in df.columns:
        raise ValueError(f"texts: {path} has no column {text_field!r} (columns: {list(df.columns)}; "
                         "set it with text_field= / --text-field)")
    return documents_from_rows(df[text_field].tolist(), path.name, text_field)


def read_hf_dataset(name: str, *, text_field: str = "text", split: str = "train",
                    config: Optional[str] = None) -> list[Document]:
    if importlib.util.find_spec("datasets") is None:  # a ValueError: the CLI exits 2 before loading the model
        raise ValueError(f"texts 'hf:{name}' needs the optional Hugging Face datasets package: "
                         "pip install 'circuit-stats[datasets]'")
    import datasets

    ds = datasets.load_dataset(name, config, split=split)
    return documents_from_dataset(ds, text_field=text_field, name=f"{name}/{split}")


def documents_from_dataset(ds, *, text_field: str = "text", name: str = "dataset") -> list[Document]:
    """Documents from a ``datasets.Dataset`` (or anything with ``column_names`` and columns by name)."""
    if text_field not in ds.column_names:
        raise ValueError(f"texts: dataset {name} has no column {text_field!r} (columns: {ds.column_names})")
    return documents_from_rows(list(ds[text_field]), name, text_field)


def documents_from_rows(values: Sequence, name: str, text_field: str) -> list[Document]:
    docs = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ValueError(f"texts: {name} row {i} {text_field!r} is {type(v).__name__}, not a string")
        docs.append(Document(f"{name}:{i}", v))
    return docs


def as_documents(texts: Union[str, Path, Iterable]) -> list[Document]:
    """Documents from a path (see ``read_corpus``), a ``datasets.Dataset``, or a list of strings,
    token-id lists or ``Document``s."""
    if isinstance(texts, (str, Path)):
        return read_corpus(texts)
    if hasattr(texts, "column_names"):
        return documents_from_dataset(texts)
    docs = []
    for i, t in enumerate(texts):
        if isinstance(t, Document):
            docs.append(t)
        elif isinstance(t, str):
            docs.append(Document(str(i), t))
        elif _is_token_list(t):
            docs.append(Document(str(i), [int(x) for x in (t.tolist() if hasattr(t, "tolist") else t)]))
        else:
            raise TypeError(f"texts[{i}] must be a string, a list of token ids or a Document, got {type(t).__name__}")
    return docs


def _is_token_list(t) -> bool:
    if hasattr(t, "tolist") and not isinstance(t, str):
        t = t.tolist()
    return isinstance(t, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in t)
