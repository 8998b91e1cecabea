"""Bring one checkpoint revision to disk, score it with a protocol, and free it again."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..protocols import get_protocol
from ..protocols.texts import BYTES
from ..scoring import score_heads
from ..tokenization import load_tokenizer
from .catalog import Revision
from .integrity import hub_weight_hashes
from .loading import DTYPES, Fetched, delete_cached_revision, fetch_revision, load_checkpoint

logger = logging.getLogger(__name__)
# Files that make a checkpoint folder carry its own tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class CheckpointScorer:
    """Scores revisions of ``model_id`` (a hub id, or a local directory when ``is_local``) with
    ``protocol`` and its resolved ``options``; ``tokenizer`` is ``--tokenizer`` (None: the model's own)."""

    model_id: str
    is_local: bool
    protocol: str
    options: dict
    dtype: Optional[str] = None
    device: Optional[str] = None
    batch_size: Optional[int] = None
    tokenizer: Optional[str] = None
    delete_after: bool = False
    _named_tokenizer: Any = field(default=None, repr=False)  # --tokenizer NAME: loaded once for every revision

    def fetch(self, rev: Revision) -> Fetched:
        """Download (hub) or locate (local) the revision's config and weight files."""
        files = None
        if not self.is_local:  # download the weight files the integrity check identified, not every format
            try:
                files = sorted(hub_weight_hashes(self.model_id, rev.revision))
            except Exception as err:  # the download below reports what is wrong
                logger.info("no file list for %s (%s); downloading every weight format", rev.revision, err)
        return fetch_revision(self.model_id, rev.revision, files)

    def score(self, rev: Revision, fetched: Fetched) -> pd.DataFrame:
        """Load the fetched checkpoint and score every head."""
        model = load_checkpoint(fetched.path, dtype=DTYPES.get(self.dtype) if self.dtype else None, device=self.device)
        try:
            takes_texts = get_protocol(self.protocol).takes_texts
            extra = {"tokenizer": self.tokenizer_for(fetched.path, rev.revision)} if takes_texts else {}
            return score_heads(model, self.protocol, batch_size=self.batch_size, progress=False, **extra, **self.options)
        finally:
            del model

    def tokenizer_for(self, checkpoint: Path, revision: str):
        """``--tokenizer``: "bytes", a tokenizer name or path, or (default) the model's own: the
        checkpoint folder's tokenizer files, or the hub repository's at this revision."""
        if self.tokenizer == BYTES:
            return BYTES
        if self.tokenizer and self._named_tokenizer is not None:
            return self._named_tokenizer
        if self.tokenizer:
            source, revision = self.tokenizer, None
        elif self.is_local:
            source, revision = checkpoint, None
            if not any((Path(checkpoint) / f).exists() for f in TOKENIZER_FILES):
                raise ValueError(f"protocol {self.protocol!r} scores text and {checkpoint} holds no tokenizer files; "
                                 "pass --tokenizer NAME, or --tokenizer bytes for a byte-level model")
        else:
            source = self.model_id
        tokenizer = load_tokenizer(source, revision=revision, what=f"protocol {self.protocol!r} scores text")
        if self.tokenizer:
            self._named_tokenizer = tokenizer
        return tokenizer

    def release(self, fetched: Any) -> None:
        """With ``delete_after``, remove a downloaded revision from the Hugging Face cache."""
        if self.delete_after and not self.is_local and isinstance(fetched, Fetched):
            freed = delete_cached_revision(self.model_id, fetched.commit)
            logger.info("deleted %s@%s from the cache (%.1f MB)", self.model_id, fetched.commit, freed / 1e6)
