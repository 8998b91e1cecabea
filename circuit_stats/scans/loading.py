"""Loading one checkpoint revision, and deleting a downloaded one from the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_revision(model_or_dir: Union[str, Path], revision: str, *, dtype: Optional[torch.dtype] = None,
                  device: Optional[str] = None):
    """A checkpoint with ``attn_implementation="circuit_stats"``: a sub-folder of a local
    directory, or a hub revision via ``from_pretrained(..., revision=...)``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the scan has its own progress bar
    path = Path(model_or_dir)
    kwargs = dict(attn_implementation="circuit_stats")
    if dtype is not None:
        kwargs["dtype"] = dtype
    if path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(path / revision, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_or_dir), revision=revision, **kwargs)
    if device is not None:
        model.to(device)
    return model.eval()


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
