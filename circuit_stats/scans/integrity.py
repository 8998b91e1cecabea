"""Which revisions hold identical weights, found before anything is downloaded.

Published checkpoint branches repeat weights (Pythia issues 195/205/206, OLMo issue 915: early
branches serving the final model, byte-identical steps). A revision's *weights digest* is the
sha256 of the sorted ``(file name, content sha256)`` pairs of its weight files:

* hub models: the LFS sha256 the hub already serves as file metadata
  (``HfApi.model_info(..., files_metadata=True)``), so no weight is downloaded;
* local checkpoint folders: sha256 of each weight file, read in chunks.

Weight files are the ``*.safetensors`` files when there are any, else ``*.bin`` model files
(optimizer and scheduler states are not weights).
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

SAFETENSORS = "*.safetensors"
PYTORCH_BIN = ("pytorch_model*.bin", "model*.bin")
CHUNK_BYTES = 8 << 20


def weight_files(names: Sequence[str]) -> list[str]:
    """The model weight files among a checkpoint's file names (sorted)."""
    top = [n for n in names if "/" not in n]
    safetensors = [n for n in top if fnmatch.fnmatch(n, SAFETENSORS)]
    if safetensors:
        return sorted(safetensors)
    return sorted(n for n in top if any(fnmatch.fnmatch(n, p) for p in PYTORCH_BIN))


def combine(file_hashes: Mapping[str, str]) -> str:
    """One digest from ``{file name: content hash}``."""
    h = hashlib.sha256()
    for name in sorted(file_hashes):
        h.update(f"{name}\t{file_hashes[name]}\n".encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def local_digest(folder: Union[str, Path]) -> str:
    """Digest of a local checkpoint folder's weight files (hashes their bytes)."""
    folder = Path(folder)
    names = weight_files([p.name for p in folder.iterdir() if p.is_file()])
    if not names:
        raise FileNotFoundError(f"{folder} holds no weight files (*.safetensors or pytorch_model*.bin)")
    return combine({n: file_sha256(folder / n) for n in names})


def hub_weight_hashes(model_id: str, revision: str) -> dict[str, str]:
    """``{weight file: sha256}`` of one hub revision from its file metadata (no download)."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(model_id, revision=revision, files_metadata=True)
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    names = weight_files(list(siblings))
    if not names:
        raise FileNotFoundError(f"{model_id}@{revision} lists no weight files (*.safetensors or pytorch_model*.bin)")
    # LFS files carry their content sha256; a file stored in git itself has its git blob id.
    return {n: (siblings[n].lfs.sha256 if siblings[n].lfs is not None else f"git:{siblings[n].blob_id}")
            for n in names}


def hub_digest(model_id: str, revision: str) -> str:
    return combine(hub_weight_hashes(model_id, revision))


def weights_digest(model_or_dir: Union[str, Path], revision: str) -> str:
    """The weights digest of ``revision`` of a local checkpoint directory or a hub model."""
    path = Path(model_or_dir)
    if path.is_dir():
        return local_digest(path / revision)
    return hub_digest(str(model_or_dir), revision)


def duplicate_groups(digests: Mapping[str, Optional[str]], order: Sequence[str]) -> dict[str, str]:
    """``{revision: the revision it duplicates}`` for every revision whose weights another one
    holds too. Each group keeps its latest revision in ``order`` (training order): the known
    cases are branches that serve a later model's weights (early Pythia branches hold ``main``),
    so the latest is the one whose step is right. Unknown digests (None) match nothing."""
    by_digest: dict[str, list[str]] = {}
    for rev in order:
        d = digests.get(rev)
        if d is not None:
            by_digest.setdefault(d, []).append(rev)
    out = {}
    for members in by_digest.values():
        for rev in members[:-1]:
            out[rev] = members[-1]
    return out
