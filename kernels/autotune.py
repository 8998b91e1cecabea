"""Which tile configs a Triton launch may try, and which one it runs.

For the fused kernel (``triton_attention``) and the split-decode kernel (``triton_decode``):

* **Bounded.** A launch tries at most ``MAX_PREFILL_CONFIGS`` (4) prefill tiles, or
  ``MAX_DECODE_CONFIGS`` (3) decode tiles (the fused kernel's 16-row tiles, the split kernel's key
  tiles): the first kept ones (``keep_config``, ``split_kept_configs``) of a list in order of
  preference, cheapest hot loop first by the static compile reports (warp-instructions per 1000
  scores, sm_90 bf16, the same order under Triton 3.9 and 3.6). Prefill
  (``bench/results/compile-sm90-2026-12-04-triton3.{9,6}.md``, D = 64 no statistics, 3.9):
  128x128 w8 s2 (228), 128x64 w8 s2 (293), 64x64 w4 s2 (295), 128x64 w8 s3 (303), 64x64 w4 s3
  (306), then the 8-warp 64-row tiles (kept only where nothing else is spill-free) and 64x32 (414;
  541 vs 356 for 128x64 at D = 128), so the bound drops the 3-stage and the 64x32 tiles where more
  than 4 are kept and keeps every tile where fewer are (64x16, last, is for fp32 at D = 256 only:
  nothing larger fits shared memory there). With K and V through TMA at D = 128
  (``NO_SPILL_TILES_TMA``, ``compile-sm90-2026-12-04-registers-triton3.{9,6}.md``, 3.9): 128x128 w8
  s2 (246), 64x64 w4 s2 (335), 128x64 w8 s2 and s3 (338). At D = 256 with TMA
  (``LOOP_SPILL_FREE_TILES_TMA``, ``compile-sm90-2026-12-05-d256-triton3.{9,6}.md``, 3.9): 128x64 w8
  s2 (440), then the 8-warp 64-row tiles (977, 1633: both warpgroups compute every score), and with
  the heavy level 128x32 w8 s2 (840 with long statistics, against 1883 for 64x32 w8). Fused decode
  (``compile-sm90-2026-11-25.md``, D = 64): 16x128 (524), 16x64 s2 (715), 16x64 s3 (770). Split
  decode (``compile-sm90-2026-12-04-split-triton3.{9,6}.md``, D = 64 all statistics, 3.9): 128
  keys (1252), 64 (1543), 32 (2180); 4 stages cost the instructions of 3, 3 come first.
  Static figures, not timings: within the bound the autotuner measures.
* **Per length bucket.** The tuning key holds the power-of-two buckets of the query and key
  lengths (``length_buckets``) beside every feature flag and the dtypes, so each bucket is tuned
  on the first length that falls in it, within 2x of any other length of the bucket, instead of
  one length deciding for a whole range (a 300-token prompt for 128k keys). The buckets are
  keywords of ``LengthBucketed``, a view of the kernel that drops them before launching: the
  kernel's signature does not change and its compiled binaries are shared by every bucket (Triton's
  own specialisation of integer arguments aside), so a new bucket repeats only the timing runs,
  at most 4 configs. Decoding over a growing cache meets a new key bucket at each power of two:
  a first call there is timed, which a CUDA-graph capture must not see (pin a config, or run each
  bucket once before capturing).
* **Cached across processes.** ``triton.autotune(cache_results=True)`` (Triton 3.6 and 3.9 both
  have it) stores each key's timings in Triton's cache directory (``TRITON_CACHE_DIR``, default
  ``~/.triton/cache``: a ``<hash>/<kernel>.autotune.json`` per key), keyed on the Triton version,
  the GPU target (sm_90: an H100 and an H200 share it), the kernel source, the tuning key and the
  configs tried; a later process reads the choice instead of timing again. Delete those files to
  re-tune. Triton keeps no such cache under the interpreter (``TRITON_INTERPRET=1``).
* **Pinnable**: ``pinning`` (an environment variable or ``pin_config``) bypasses the autotuner.

Imports go one way: ``triton_attention`` / ``triton_decode -> pinning -> autotune -> triton_common``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import triton
from triton.runtime import KernelInterface

from .triton_common import SMEM_LIMIT_BYTES, constexpr_names, device_smem_limit, head_block, smem_bytes, smem_fits

# ----------------------------------------------------------------------------------------------
# The fused kernel's tiles.

# In order of preference (see the module docstring): the autotuner tries the first kept ones.
PREFILL_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in ((128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3), (64, 64, 4, 3),
                         (64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2), (64, 32, 8, 2), (64, 16, 8, 2))
]
# Decode: a handful of query rows per sequence, so a 16-row tile (the smallest tl.dot takes).
DECODE_CONFIGS = [
    triton.Config({"BLOCK_M": 16, "BLOCK_N": bn}, num_warps=4, num_stages=s)
    for bn, s in ((128, 2), (64, 2), (64, 3))
]
MAX_PREFILL_CONFIGS = 4
MAX_DECODE_CONFIGS = 3


def tile_of(cfg: triton.Config) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` of a fused-kernel config."""
    return cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages


def _tiles(*specs: tuple[int, int, int, int]) -> frozenset:
    return frozenset(specs)


# Tiles that compile without register spills on sm_90 (triton 3.9), per the compile report
# (bench/results/compile-sm90-*.json; `python -m bench.compile_report --all-configs` shows the
# spilling ones): keyed by (head-dim tile, loop level, head dim padded) where the loop level is
# "none" (no per-score work beyond attention), "modifiers" (a sliding window and/or a logit softcap
# and nothing else in the loop: such a layer outside record()), "entropy" (entropy without in-loop
# token matching, with or without a softcap: the default, the band kernel matches tokens after the
# main pass), "stats" (in-loop token matching, ``TOKEN_MATCH = "loop"``, and the split-decode
# kernel) or "heavy" (any of distance, local, top1 or span, a window together with statistics, or a
# softcap with in-loop token matching: ``loop_level``). A softcap (one ``tanh.approx.f32`` per
# score) leaves every tile of its level spill-free (D = 64, 80, 128 and 256, key padding mask or
# not, TMA and pointer loads, Triton 3.9 and 3.6: compile-sm90-2026-12-05-capped-*). Spilling is
# not monotone in the tile (at D = 128 with all statistics 128x64 w8 spills with 2 stages and not
# with 3), so this is a measured list rather than a register formula.
# 64x16 w8 s2 is for fp32 at D = 256 only (``NO_SPILL_TILES_FP32``): the one 64-row tile whose two
# Q copies and K/V stages fit 227 KB there (196608 B, sm_90, Triton 3.9 and 3.6).
FP32_ONLY_TILES = _tiles((64, 16, 8, 2))
# 128x32 w8 s2 is for D = 256 with the heavy level only (``LOOP_SPILL_FREE_TILES_TMA``).
D256_HEAVY_ONLY_TILES = _tiles((128, 32, 8, 2))
_ALL_PREFILL = _tiles(*[tile_of(c) for c in PREFILL_CONFIGS]) - FP32_ONLY_TILES - D256_HEAVY_ONLY_TILES
NO_SPILL_TILES = {
    (64, "none", False): _ALL_PREFILL - {(64, 32, 8, 2), (64, 64, 8, 2)},
    (64, "stats", False): _tiles((128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)),
    (64, "modifiers", False): _ALL_PREFILL - {(64, 32, 8, 2), (64, 64, 8, 2)},
    (64, "heavy", False): _tiles((128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)),
    (128, "none", False): _tiles((128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2)),
    (128, "none", True): _tiles((128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2)),
    (128, "modifiers", False): _tiles((128, 64, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2)),
    (128, "modifiers", True): _tiles((64, 64, 8, 2), (64, 32, 8, 2)),
    (128, "stats", False): _tiles((128, 64, 8, 3), (64, 32, 4, 2)),
    (128, "stats", True): _tiles((64, 32, 4, 2)),
    # Entropy without in-loop token matching (the default: the band kernel matches tokens after
    # the main pass), spill-free under Triton 3.9 and 3.6 (bf16, compile reports
    # compile-sm90-2026-12-04-entropy-triton3.{9,6}); 128x64 w8 s3 spills 28 B (3.9) there.
    (64, "entropy", False): _ALL_PREFILL,
    (128, "entropy", False): _tiles((64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (64, 32, 4, 2), (64, 32, 8, 2)),
    (128, "entropy", True): _tiles((64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (64, 32, 4, 2), (64, 32, 8, 2)),
    (256, "entropy", False): _tiles((64, 32, 8, 2)),
    # Every statistic and modifier at once leaves only 64x32 w8 s2 spill-free (64x64 w8 s2 spills
    # 88 B between the key loops under 3.9 since the local/span segments, 4 B under 3.6 before).
    (128, "heavy", False): _tiles((64, 32, 8, 2)),
    (128, "heavy", True): _tiles((64, 32, 8, 2)),
    (256, "none", False): _tiles((64, 64, 8, 2), (64, 32, 8, 2)),
    (256, "modifiers", False): _tiles((64, 32, 8, 2)),
    (256, "stats", False): _tiles((64, 32, 8, 2)),
    # The heavy level at D = 256: this tile spilled least (28-76 B, outside the key loops) before the
    # TMA loads, and spills nothing with them (long and every statistic at once, Triton 3.9 and 3.6:
    # compile-sm90-2026-12-05-triton3.{9,6}).
    (256, "heavy", False): _tiles((64, 32, 8, 2)),
}
# Launches that read K and V through TMA (``TMA_KV``: the K/V layout allows tensor descriptors,
# as contiguous tensors do) hold no K/V address registers (64 per thread at D = 128 128x128 with
# pointer loads): at D = 128 these tiles are spill-free under Triton 3.9 and 3.6 (bf16,
# compile-sm90-2026-12-04-registers-triton3.{9,6}), 128x128 among them but with the heavy loop level
# (long statistics spill 52-684 B there), nor 128x64 w8 (with a key padding mask, Triton 3.6 spills
# 8-20 B outside the loops: long, full); the same at head dims padded to 128 (80 and 96 measured,
# compile-sm90-2026-12-04-registers-padded-triton3.{9,6}). Other keys, and pointer loads, keep
# ``NO_SPILL_TILES``.
_EIGHT_WARP_64 = _tiles((64, 64, 8, 2), (64, 32, 8, 2))
_HEAVY_SPILLING_TMA = _tiles((128, 128, 8, 2), (128, 64, 8, 2), (128, 64, 8, 3))
_D128_TMA = _tiles((128, 128, 8, 2), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2))
NO_SPILL_TILES_TMA = {
    (128, level, padded): tiles for padded in (False, True) for level, tiles in (
        ("none", _D128_TMA), ("modifiers", _D128_TMA | _EIGHT_WARP_64), ("entropy", _D128_TMA | _EIGHT_WARP_64),
        ("heavy", _D128_TMA - _HEAVY_SPILLING_TMA | _EIGHT_WARP_64))
}
# At D = 256 no 128-row tile compiles without spills, but with TMA loads 128x64 w8 s2 spills only
# outside the key loops (prologue and epilogue, 36-392 B per program; bf16, Triton 3.9 and 3.6,
# key padding mask or not: compile-sm90-2026-12-05-d256-triton3.{9,6}), which the D = 256 target
# allows, and executes about half the loop instructions per score of the 64-row tiles (422.9 vs
# 818.4 without statistics, Triton 3.6): with 8 warps on 64 rows both warpgroups compute the whole
# score tile (2.1 MUFU results per score, against 1.06). With the heavy level 128x64 spills inside
# the local/span segment loops; 128x32 w8 s2 does not under Triton 3.9 (long statistics and
# everything at once, key padding mask or not: compile-sm90-2026-12-05-d256-heavy-triton3.{9,6}) and
# executes 0.45x the loop instructions of 64x32 w8 s2 there; Triton 3.6 puts a few spill
# instructions in those loops with a key padding mask (``SPILLING_BEFORE_TRITON_3_7``).
LOOP_SPILL_FREE_TILES_TMA = {
    **{(256, level, False): _tiles((128, 64, 8, 2)) for level in ("none", "modifiers", "entropy")},
    (256, "heavy", False): D256_HEAVY_ONLY_TILES,
}
# Triton 3.6 (the GPU machines' release) allocates registers differently: these tiles, spill-free
# under 3.9, spill there (sm_90 bf16: D=128 all statistics 128x64 w8 s3, 32 B; D=256 long statistics
# with a key padding mask 128x32 w8 s2, inside the key loops), so the autotuner does not try them
# under Triton < 3.7.
SPILLING_BEFORE_TRITON_3_7 = {
    (128, "stats", False): _tiles((128, 64, 8, 3)),
    (256, "heavy", False): D256_HEAVY_ONLY_TILES,
}
TRITON_VERSION = tuple(int(x) for x in triton.__version__.split(".")[:2])
# fp32 inputs (3xTF32 holds two halves of every operand): the smallest tiles only. Spill-free at
# D <= 64 without loop statistics; the least-spilling tile measured elsewhere (see the report). At
# D = 256 64x32 needs 262144 B of shared memory (two Q copies), over sm_90's 232448: 64x16 w8 s2
# (196608 B) spills least of those that fit (sm_90 compiles, Triton 3.9: 2272 B with no
# statistics, 6112 B with all; 64x32 s1 and 64x16 w4 or s3 spill more).
NO_SPILL_TILES_FP32 = {64: _tiles((64, 32, 4, 2)), 128: _tiles((64, 32, 4, 2)), 256: _tiles((64, 16, 8, 2))}
LOOP_LEVELS = ("none", "modifiers", "entropy", "stats", "heavy")


def kept_tiles(*, head_dim: int, elt_bytes: int, loop_level: str,
               triton_version: tuple[int, int] = TRITON_VERSION, tma: bool = False) -> frozenset:
    """The prefill tiles a launch may use (before the shared-memory check): those measured
    spill-free, and at D = 256 with TMA loads those free of spills inside the key loops
    (``LOOP_SPILL_FREE_TILES_TMA``); ``tma``: the launch reads K and V through TMA
    (``NO_SPILL_TILES_TMA``)."""
    tile_class = max(64, head_block(head_dim))
    if elt_bytes == 4:
        return NO_SPILL_TILES_FP32[tile_class]
    padded = head_block(head_dim) != head_dim and head_dim > 64
    key = (tile_class, loop_level, padded and tile_class == 128)
    spilling = SPILLING_BEFORE_TRITON_3_7.get(key, frozenset()) if triton_version < (3, 7) else frozenset()
    table = NO_SPILL_TILES_TMA if tma and key in NO_SPILL_TILES_TMA else NO_SPILL_TILES
    loop_spill_free = LOOP_SPILL_FREE_TILES_TMA.get(key, frozenset()) if tma else frozenset()
    return (table[key] | loop_spill_free) - spilling


def keep_config(cfg: triton.Config, *, head_dim: int, elt_bytes: int, loop_level: str,
                smem_limit: int = SMEM_LIMIT_BYTES, triton_version: tuple[int, int] = TRITON_VERSION,
                tma: bool = False) -> bool:
    """Whether the autotuner may try ``cfg``: it fits shared memory and is a tile measured to
    compile without register spills, or at D = 256 without spills inside the key loops
    (``kept_tiles``). Decode tiles (16 rows) are small enough for every head dim."""
    bm, bn, _, st = tile_of(cfg)
    bd = head_block(head_dim)
    if smem_bytes(bm, bn, st, bd, elt_bytes) > smem_limit:
        return False
    if bm == 16:
        return bd < 256 or (bn, st) == (64, 2)
    return tile_of(cfg) in kept_tiles(head_dim=head_dim, elt_bytes=elt_bytes, loop_level=loop_level,
                                      triton_version=triton_version, tma=tma)


# Constexpr flags by the per-score work they add to the key loop (point statistics and learned
# sinks are epilogue-only).
STATS_FLAGS = ("HAS_TOK", "HAS_ENT")
HEAVY_FLAGS = ("HAS_DIST", "HAS_LOCAL", "HAS_TOP1", "HAS_SPAN")


def loop_level(constexprs: Mapping[str, Any]) -> str:
    """A launch's loop level (``LOOP_LEVELS``) from its constexprs: which tile list it may use."""
    def on(flag: str) -> bool:
        return bool(constexprs.get(flag, False))

    stats = any(on(f) for f in STATS_FLAGS)
    if any(on(f) for f in HEAVY_FLAGS) or (on("HAS_WINDOW") and stats) or (on("HAS_SOFTCAP") and on("HAS_TOK")):
        return "heavy"
    if stats:
        return "stats" if on("HAS_TOK") else "entropy"
    return "modifiers" if on("HAS_WINDOW") or on("HAS_SOFTCAP") else "none"


def tuner_bucket(q_len: int) -> str:
    """The config list a launch tunes over: ``"decode"`` (``Nq <= 16``, ``DECODE_CONFIGS``) or
    ``"prefill"`` (``PREFILL_CONFIGS``)."""
    return "decode" if q_len <= 16 else "prefill"


def candidate_configs(bucket: str, *, head_dim: int, elt_bytes: int, loop_level: str,
                      triton_version: tuple[int, int] = TRITON_VERSION, tma: bool = False,
                      smem_limit: int = SMEM_LIMIT_BYTES) -> list[triton.Config]:
    """The configs the autotuner tries for one launch: the first kept ones of the bucket's list,
    at most ``MAX_DECODE_CONFIGS`` / ``MAX_PREFILL_CONFIGS``, within ``smem_limit`` bytes of shared
    memory (the device's, ``device_smem_limit``). When no 16-row decode tile is kept (fp32 at head
    dims over 128 on sm_90: none fits shared memory) the prefill candidates (their 64-row tiles
    mask the rows beyond ``Nq``); when no prefill tile is kept, the smallest that fits; a
    ``ValueError`` when none fits (fp32 at head dim 256 on an A100). ``tma``: the launch reads K and
    V through TMA (``keep_config``)."""
    decode = bucket == "decode"
    configs = DECODE_CONFIGS if decode else PREFILL_CONFIGS
    bd = head_block(head_dim)
    kept = [c for c in configs if keep_config(c, head_dim=head_dim, elt_bytes=elt_bytes, loop_level=loop_level,
                                              smem_limit=smem_limit, triton_version=triton_version, tma=tma)]
    if kept:
        return kept[:MAX_DECODE_CONFIGS if decode else MAX_PREFILL_CONFIGS]
    if decode:
        return candidate_configs("prefill", head_dim=head_dim, elt_bytes=elt_bytes, loop_level=loop_level,
                                 triton_version=triton_version, smem_limit=smem_limit, tma=tma)
    fits = fitting_configs(configs, block_d=bd, elt_bytes=elt_bytes, smem_limit=smem_limit)
    if not fits:
        smallest = min(smem_bytes(*tile_of(c)[:2], c.num_stages, bd, elt_bytes) for c in configs)
        raise ValueError(f"no tile of the fused kernel fits this GPU's {smem_limit} B of shared memory per block "
                         f"with {elt_bytes}-byte inputs at head_dim {head_dim} (the smallest needs {smallest} B): "
                         "use bf16/fp16 inputs or backend='torch'")
    return sorted(fits, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])[:1]


def fitting_configs(configs: list[triton.Config], *, block_d: int, elt_bytes: int,
                    smem_limit: int) -> list[triton.Config]:
    """The fused-kernel ``configs`` whose tiles fit ``smem_limit`` bytes of shared memory."""
    return [c for c in configs if smem_fits(*tile_of(c)[:2], c.num_stages, block_d, elt_bytes, smem_limit)]


def fused_fits(*, head_dim: int, elt_bytes: int, smem_limit: int) -> bool:
    """Whether any prefill tile of the fused kernel fits ``smem_limit`` bytes of shared memory at
    this head dim and element size (not so for fp32 at head dim 256 on an A100)."""
    return bool(fitting_configs(PREFILL_CONFIGS, block_d=head_block(head_dim), elt_bytes=elt_bytes,
                                smem_limit=smem_limit))


def prune_fused_configs(configs: list[triton.Config], named_args: dict, **kwargs: Any) -> list[triton.Config]:
    """``early_config_prune`` of the fused kernel's autotuner (``configs`` is ignored: the list
    follows from the launch's query length)."""
    a = {**named_args, **kwargs}
    return candidate_configs(tuner_bucket(a["Nq"]), head_dim=a["HEAD_DIM"], elt_bytes=a["Q"].element_size(),
                             loop_level=loop_level(a), tma=a.get("TMA_KV", False),
                             smem_limit=device_smem_limit(a["Q"].device))


# ----------------------------------------------------------------------------------------------
# The split-decode kernel's key tiles (its 16-row tile is fixed: ``triton_decode.ROWS_BLOCK``).

# 4 warps: a decode tile has 16 to 64 rows (8 warps gave no fewer registers and spilled at D=128).
# In order of preference (see the module docstring). BLOCK_N = 16 is for fp32 only.
SPLIT_CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=4, num_stages=s)
    for bn in (128, 64, 32) for s in (3, 4, 2)
] + [triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=s) for s in (2, 3, 4)]


def split_kept_configs(configs: list[triton.Config], *, block_d: int, block_m: int, elt_bytes: int,
                       smem_limit: int = SMEM_LIMIT_BYTES) -> list[triton.Config]:
    """The split-kernel configs that fit shared memory and registers (unbounded, in order).

    16-bit inputs: key tiles of 32 to 128 (BLOCK_M x BLOCK_N <= 64 x 64 at BLOCK_D = 256), 3 or 4
    stages (with all statistics and padding, 2-stage sm_90 compiles spilled 8-36 bytes outside
    the key loop at D = 64, 128 and 256; 3 and 4 stages did not).
    fp32 inputs (exact fp32 dots on the CUDA cores): BLOCK_N x BLOCK_D <= 2048, or 16 keys, i.e.
    32 keys at D <= 64 and 16 above (sm_90 compiles of larger fp32 tiles spill)."""
    kept = [c for c in configs if smem_fits(block_m, c.kwargs["BLOCK_N"], c.num_stages, block_d, elt_bytes, smem_limit)]
    if elt_bytes >= 4:
        return [c for c in kept if c.kwargs["BLOCK_N"] * block_d <= 2048 or c.kwargs["BLOCK_N"] == 16]
    kept = [c for c in kept if c.kwargs["BLOCK_N"] >= 32 and c.num_stages >= 3]
    if block_d >= 256:
        kept = [c for c in kept if block_m * c.kwargs["BLOCK_N"] <= 64 * 64] or kept
    return kept


# The split kernel's key tiles, largest first: a split of ``split_len`` keys is a whole number of
# key tiles, so a launch tries only the tiles that divide its split length.
SPLIT_KEY_TILES = tuple(sorted({c.kwargs["BLOCK_N"] for c in SPLIT_CONFIGS}, reverse=True))


def max_key_tile(split_len: int) -> int:
    """The largest key tile of ``SPLIT_KEY_TILES`` that divides ``split_len``; 0 when none does."""
    return next((bn for bn in SPLIT_KEY_TILES if split_len > 0 and split_len % bn == 0), 0)


def split_len_error(split_len: int, tiles: tuple[int, ...] = SPLIT_KEY_TILES) -> str:
    """What a ``ValueError`` says of a ``split_len`` that is no multiple of the key ``tiles``."""
    what = f"the key tile {tiles[0]}" if len(tiles) == 1 else f"a key tile ({', '.join(map(str, tiles))})"
    return f"split_len must be a positive multiple of {what}, got {split_len}"


def split_candidates(configs: list[triton.Config], *, block_d: int, block_m: int, elt_bytes: int,
                     split_len: int, smem_limit: int = SMEM_LIMIT_BYTES) -> list[triton.Config]:
    """The split-kernel configs a launch with splits of ``split_len`` keys tries: the first
    ``MAX_DECODE_CONFIGS`` kept ones (``split_kept_configs``) whose key tile divides ``split_len``,
    else the smallest dividing config (e.g. 16 keys for 16-bit inputs and ``split_len = 48``);
    empty when no key tile divides ``split_len``."""
    dividing = [c for c in configs if split_len > 0 and split_len % c.kwargs["BLOCK_N"] == 0]
    kept = split_kept_configs(dividing, block_d=block_d, block_m=block_m, elt_bytes=elt_bytes, smem_limit=smem_limit)
    if kept:
        return kept[:MAX_DECODE_CONFIGS]
    return [min(dividing, key=lambda c: (c.kwargs["BLOCK_N"], c.num_stages))] if dividing else []


def prune_split_configs(configs: list[triton.Config], named_args: dict, **kwargs: Any) -> list[triton.Config]:
    """``early_config_prune`` of the split kernel's autotuner: ``split_candidates`` for the
    launch's ``split_len``; ``ValueError`` when no key tile divides it (the launcher checks first)."""
    a = {**named_args, **kwargs}  # launches pass their arguments by name
    elt = a["Q"].element_size() if hasattr(a.get("Q"), "element_size") else 2
    got = split_candidates(configs, block_d=a["BLOCK_D"], block_m=a["BLOCK_M"], elt_bytes=elt,
                           split_len=a["split_len"], smem_limit=device_smem_limit(getattr(a.get("Q"), "device", None)))
    if not got:
        raise ValueError(split_len_error(a["split_len"]))
    return got


# ----------------------------------------------------------------------------------------------
# Autotuners: one per kernel, keyed on the feature flags, the dtypes and the length buckets.

LENGTH_BUCKET_ARGS = ("Q_LEN_BUCKET", "K_LEN_BUCKET")
# The split kernel's tuning key also holds the largest key tile dividing the split length
# (``max_key_tile``): launches whose split lengths admit different tiles are tuned apart, so a
# choice made for 512-key splits (128 keys) is never reused for 32-key splits.
KEY_TILE_ARG = "MAX_KEY_TILE"
TUNING_ONLY_ARGS = LENGTH_BUCKET_ARGS + (KEY_TILE_ARG,)


def length_bucket(n: int) -> int:
    """The power-of-two bucket of a length: the smallest power of two >= ``n`` (1 for 0)."""
    return triton.next_power_of_2(max(int(n), 1))


def length_buckets(q_len: int, k_len: int) -> dict[str, int]:
    """The tuning-key keywords of a launch with these query and key lengths."""
    return dict(zip(LENGTH_BUCKET_ARGS, (length_bucket(q_len), length_bucket(k_len))))


def split_tuning_keywords(q_len: int, k_len: int, split_len: int) -> dict[str, int]:
    """The split tuner's keywords: the length buckets and ``KEY_TILE_ARG``."""
    return {**length_buckets(q_len, k_len), KEY_TILE_ARG: max_key_tile(split_len)}


class LengthBucketed(KernelInterface):
    """A jit kernel as the autotuner sees it: the same arguments plus the keywords
    ``LENGTH_BUCKET_ARGS`` (and ``extra``, of ``TUNING_ONLY_ARGS``), which join the tuning key and
    are dropped before the kernel runs (so the kernel and its compiled binaries are shared by all
    buckets). ``fn`` is the kernel, as Triton's autotuner expects of what it wraps."""

    def __init__(self, fn: Any, extra: tuple[str, ...] = ()):
        self.fn = fn
        self.arg_names = list(fn.arg_names) + list(LENGTH_BUCKET_ARGS) + list(extra)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn.run(*args, **self.kernel_kwargs(kwargs))

    def warmup(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn.warmup(*args, **self.kernel_kwargs(kwargs))

    @staticmethod
    def kernel_kwargs(kwargs: dict) -> dict:
        return {k: v for k, v in kwargs.items() if k not in TUNING_ONLY_ARGS}


def tuning_key(kernel: Any, tiles: tuple[str, ...]) -> list[str]:
    """Every constexpr of ``kernel`` but its tile parameters, and the length buckets."""
    return [name for name in constexpr_names(kernel) if name not in tiles] + list(LENGTH_BUCKET_ARGS)


def fused_tuner(kernel: Any, do_bench: Optional[Callable] = None) -> Any:
    """The fused kernel's autotuner: launch it as ``tuner[grid](*args, **constexprs,
    **length_buckets(Nq, Nk))``. Tuned per value of every constexpr but the tile (BLOCK_D follows
    HEAD_DIM), per argument dtype (Triton adds those) and per length bucket; ``do_bench`` as in
    ``triton.autotune`` (default: Triton's benchmarker)."""
    return triton.autotune(configs=PREFILL_CONFIGS + DECODE_CONFIGS,
                           key=tuning_key(kernel, ("BLOCK_D", "BLOCK_M", "BLOCK_N")),
                           prune_configs_by={"early_config_prune": prune_fused_configs},
                           do_bench=do_bench, cache_results=True)(LengthBucketed(kernel))


def split_tuner(kernel: Any, do_bench: Optional[Callable] = None) -> Any:
    """The split-decode kernel's autotuner: launch it with ``**split_tuning_keywords(Nq, Nk,
    split_len)`` (see ``fused_tuner``; DOT_PRECISION follows the dtype; the key tiles tried divide
    ``split_len``)."""
    return triton.autotune(configs=SPLIT_CONFIGS,
                           key=tuning_key(kernel, ("BLOCK_N", "DOT_PRECISION")) + [KEY_TILE_ARG],
                           prune_configs_by={"early_config_prune": prune_split_configs},
                           do_bench=do_bench, cache_results=True)(LengthBucketed(kernel, (KEY_TILE_ARG,)))
