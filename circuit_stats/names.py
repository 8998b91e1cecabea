"""Names the whole application shares, importable without torch (the command line's parser uses
them): the protocols and the statistics a profile (and an evaluation) reports."""

from __future__ import annotations

# circuit_stats.protocols.PROTOCOLS's keys (tests/test_command_line.py checks they agree)
PROTOCOL_NAMES = ("natural", "repeat", "retrieval", "sink", "xu2026")
# Per (document, layer, head, position bin): what record() is asked for is in profiling.profile.record_options.
PROFILE_STATISTICS = ("sink", "previous_token", "induction", "duplicate", "entropy", "distance", "local", "top1_prob")
# Opt-in (not in the default set): the attention received per bin of *key* position (alpha_k pooled).
PROFILE_KEY_STATISTICS = ("key_attention",)
# Gu et al.'s threshold on alpha_k, and the fewest queries after a key for its alpha_k to count:
# the defaults of the sink protocol's secondary sinks and of profile's per-token sink table.
SINK_EPS = 0.3
SINK_MIN_QUERIES = 8
