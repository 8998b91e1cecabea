"""Fetching one checkpoint revision (a download for hub models), loading it, and deleting a
downloaded revision from the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CONFIG_FILES = ["*.json"]


class Fetched(NamedTuple):
    """A revision on local disk: its folder, and its commit hash when it came from the hub cache."""

    path: Path
    commit: Optional[str] = None


def fetch_revision(model_or_dir: Union[str, Path], revision: str,
                   weight_files: Optional[Sequence[str]] = None) -> Fetched:
    """A local sub-folder as is; a hub revision downloaded into the Hugging Face cache with
    ``huggingface_hub.snapshot_download`` (configs plus ``weight_files``, or every safetensors
    and bin file when those are not known)."""
    path = Path(model_or_dir)
    if path.is_dir():
        return Fetched(path / revision)
    from huggingface_hub import snapshot_download

    patterns = CONFIG_FILES + (list(weight_files) if weight_files else ["*.safetensors", "*.bin"])
    folder = Path(snapshot_download(str(model_or_dir), revision=revision, allow_patterns=patterns))
    return Fetched(folder, folder.name)  # the cache's snapshots/<commit hash> folder


def load_checkpoint(folder: Union[str, Path], *, dtype: Optional[torch.dtype] = None, device: Optional[str] = None):
    """A ``save_pretrained`` folder loaded with ``attn_implementation="circuit_stats"``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the scan has its own progress bar
    kwargs = dict(attn_implementation="circuit_stats")
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(Path(folder), **kwargs)
    if device is not None:
        model.to(device)
    return model.eval()


def load_revision(model_or_dir: Union[str, Path], revision: str, *, dtype: Optional[torch.dtype] = None,
                  device: Optional[str] = None):
    """Fetch and load one revision of a local checkpoint directory or a hub model."""
    return load_checkpoint(fetch_revision(model_or_dir, revision).path, dtype=dtype, device=device)


def delete_cached_revision(model_id: str, commit_hash: Optional[str]) -> int:
    """Remove one downloaded revision from the Hugging Face cache; returns bytes freed."""
    if not commit_hash:
        return 0
    from huggingface_hub import scan_cache_dir

    cache = scan_cache_dir()
    hashes = [rev.commit_hash for repo in cache.repos if repo.repo_id == model_id
              for rev in repo.revisions if rev.commit_hash == commit_hash]
    if not hashes:
        return 0
    strategy = cache.delete_revisions(*hashes)
    strategy.execute()
    return int(strategy.expected_freed_size)
