"""Scans over training checkpoints, one job per module:

* ``catalog``: which revisions a model has (hub branches, built-in schedules, local folders) and
  selections of them (``all``, ``paper``, ``every:N``, ``log:K``, names);
* ``files``: atomic writes; ``loading``: loading a revision, deleting it from the cache;
* ``scan``: the scan loop (``Scan``, ``scan``); ``emergence``: class fractions, jumps, onsets and
  the summary; ``report``: plots and Markdown.
"""

from .catalog import Revision, revisions, select_revisions
from .emergence import class_fractions, largest_jump, summarise
from .report import write_report
from .scan import Scan, ScanOutcome

# The scan() function stays in its module (circuit_stats.scans.scan.scan): re-exporting it here
# would hide the module of the same name.
__all__ = ["Revision", "Scan", "ScanOutcome", "class_fractions", "largest_jump", "revisions", "select_revisions",
           "summarise", "write_report"]
