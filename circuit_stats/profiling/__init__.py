"""Long-context profiling: position-resolved attention statistics of every head over a corpus.

``profile(model, texts, ...)`` (also ``circuit-stats profile``); corpus readers in ``corpus``,
chunked prefill in ``prefill``, the resumable output directory in ``writer``, plots and
``summary.md`` in ``report``.
"""

from ..tokenization import ByteTokenizer
from .corpus import Document, read_corpus, sample_corpus_path
from .prefill import cache_keyword, chunked_prefill
from .profile import STATISTICS, profile

BytesTokenizer = ByteTokenizer  # the former name

__all__ = ["STATISTICS", "ByteTokenizer", "BytesTokenizer", "Document", "cache_keyword", "chunked_prefill", "profile",
           "read_corpus", "sample_corpus_path"]
