"""Autotuning (kernels/autotune.py): which configs a launch may try, bounded, per length bucket,
cached. The pruning is pure Python; the tuners are Triton's real autotuners over a recording
stand-in kernel, with a stand-in benchmark (no GPU)."""

import inspect

import pytest
import torch
import triton
import triton.language as tl
from circuit_stats.kernels import autotune, dispatch, triton_common
from circuit_stats.kernels.autotune import (DECODE_CONFIGS, LOOP_LEVELS, MAX_DECODE_CONFIGS, MAX_PREFILL_CONFIGS,
                                            PREFILL_CONFIGS, SPLIT_CONFIGS, candidate_configs, length_bucket,
                                            length_buckets, tile_of)
from circuit_stats.kernels.triton_common import SMEM_LIMIT_BYTES, head_block, smem_bytes

HEAD_DIMS = [8, 16, 32, 40, 64, 80, 96, 128, 160, 200, 256]
VERSIONS = [(3, 6), (3, 9)]


def tiles(configs) -> list[tuple]:
    return [tile_of(c) for c in configs]


# ----------------------------------------------------------------------------------------------
# Bounded candidate lists.

@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("version", VERSIONS, ids=str)
@pytest.mark.parametrize("elt_bytes", [2, 4])
@pytest.mark.parametrize("level", LOOP_LEVELS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("bucket", ["decode", "prefill"])
def test_candidates_are_bounded_kept_and_in_preference_order(bucket, head_dim, level, elt_bytes, version, tma):
    """1 to the bound configs, each fitting shared memory, in the list's order, and (where any
    tile is kept) exactly the first kept ones: none skipped ahead of a tried one."""
    got = candidate_configs(bucket, head_dim=head_dim, elt_bytes=elt_bytes, loop_level=level, triton_version=version,
                            tma=tma)
    bound = MAX_DECODE_CONFIGS if bucket == "decode" else MAX_PREFILL_CONFIGS
    configs = DECODE_CONFIGS if bucket == "decode" else PREFILL_CONFIGS
    assert 1 <= len(got) <= bound
    if not any(c is k for k in configs for c in got):  # no 16-row tile fits: the prefill candidates
        assert bucket == "decode" and elt_bytes == 4 and head_block(head_dim) == 256
        configs = PREFILL_CONFIGS
        assert got == candidate_configs("prefill", head_dim=head_dim, elt_bytes=elt_bytes, loop_level=level, tma=tma)
    assert all(any(c is k for k in configs) for c in got)
    positions = [next(i for i, k in enumerate(configs) if k is c) for c in got]
    assert positions == sorted(positions)
    bd = head_block(head_dim)
    for c in got:
        bm, bn, _, st = tile_of(c)
        assert smem_bytes(bm, bn, st, bd, elt_bytes) <= SMEM_LIMIT_BYTES
    kept = [c for c in configs if autotune.keep_config(c, head_dim=head_dim, elt_bytes=elt_bytes, loop_level=level,
                                                       triton_version=version, tma=tma)]
    if kept:
        assert got == kept[:bound]


# (bucket, head_dim, bytes, loop level, Triton) -> the tiles tried, from the compile reports.
EXPECTED = {
    # D = 64, 16-bit, no statistics: 6 spill-free tiles, the 4 cheapest per score are tried.
    ("prefill", 64, 2, "none", (3, 9)): [(128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
    ("prefill", 64, 2, "none", (3, 6)): [(128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
    ("prefill", 128, 2, "none", (3, 9)): [(128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3), (64, 64, 4, 3)],
    ("prefill", 64, 2, "stats", (3, 9)): [(128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)],
    # Triton 3.6 spills D=128 all statistics 128x64 w8 s3 (32 B); every modifier leaves 64x32 w8 s2 in both.
    ("prefill", 128, 2, "stats", (3, 9)): [(128, 64, 8, 3), (64, 32, 4, 2)],
    ("prefill", 128, 2, "stats", (3, 6)): [(64, 32, 4, 2)],
    # Entropy without in-loop token matching (the default "all"): spill-free in both Tritons.
    ("prefill", 64, 2, "entropy", (3, 6)): [(128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
    ("prefill", 128, 2, "entropy", (3, 9)): [(64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (64, 32, 4, 2)],
    ("prefill", 256, 2, "entropy", (3, 6)): [(64, 32, 8, 2)],
    ("prefill", 128, 2, "heavy", (3, 9)): [(64, 32, 8, 2)],
    ("prefill", 128, 2, "heavy", (3, 6)): [(64, 32, 8, 2)],
    ("prefill", 96, 2, "modifiers", (3, 9)): [(64, 64, 8, 2), (64, 32, 8, 2)],  # padded to 128 on chip
    ("prefill", 256, 2, "heavy", (3, 9)): [(64, 32, 8, 2)],
    ("prefill", 256, 2, "none", (3, 9)): [(64, 64, 8, 2), (64, 32, 8, 2)],  # pointer loads: no 128-row tile
    ("prefill", 128, 4, "none", (3, 9)): [(64, 32, 4, 2)],  # fp32: 3xTF32 tiles
    ("decode", 64, 2, "heavy", (3, 9)): [(16, 128, 4, 2), (16, 64, 4, 2), (16, 64, 4, 3)],
    ("decode", 256, 2, "none", (3, 6)): [(16, 64, 4, 2)],
    # fp32 at D = 256: no 16-row tile fits shared memory, nor 64x32 (two Q copies: 262144 B).
    ("decode", 256, 4, "none", (3, 9)): [(64, 16, 8, 2)],
    ("prefill", 256, 4, "heavy", (3, 6)): [(64, 16, 8, 2)],
    ("prefill", 200, 4, "entropy", (3, 9)): [(64, 16, 8, 2)],
}


# With K and V read through TMA (contiguous tensors), from compile-sm90-2026-12-04-registers-triton3.{9,6}:
# D = 128 keeps 128x128 w8 s2 without statistics, with entropy and with a window (not with the heavy
# level: long statistics spill there), and the 64-row tiles with the heavy level (128x64 w8 spills with
# a key padding mask under 3.6), padded head dims (80, 96)
# too; other head dims keep the pointer loads' lists.
EXPECTED_TMA = {
    ("prefill", 128, 2, "none", (3, 9)): [(128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
    ("prefill", 128, 2, "none", (3, 6)): [(128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
    ("prefill", 128, 2, "modifiers", (3, 6)): [(128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
    ("prefill", 128, 2, "entropy", (3, 9)): [(128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
    ("prefill", 128, 2, "heavy", (3, 9)): [(64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (64, 32, 4, 2)],
    ("prefill", 128, 2, "heavy", (3, 6)): [(64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (64, 32, 4, 2)],
    ("prefill", 128, 2, "stats", (3, 6)): [(64, 32, 4, 2)],
    ("prefill", 96, 2, "modifiers", (3, 9)): [(128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
    ("prefill", 80, 2, "heavy", (3, 6)): [(64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (64, 32, 4, 2)],
    ("prefill", 64, 2, "entropy", (3, 6)): [(128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
    ("prefill", 128, 4, "none", (3, 9)): [(64, 32, 4, 2)],
    # D = 256: 128x64 w8 s2 spills only outside the key loops (compile-sm90-2026-12-05-d256-triton3.{9,6}),
    # and 128x32 w8 s2 with the heavy level under 3.9 (-d256-heavy-); not with pointer loads (EXPECTED).
    ("prefill", 256, 2, "none", (3, 6)): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 32, 8, 2)],
    ("prefill", 256, 2, "modifiers", (3, 9)): [(128, 64, 8, 2), (64, 32, 8, 2)],
    ("prefill", 256, 2, "entropy", (3, 6)): [(128, 64, 8, 2), (64, 32, 8, 2)],
    ("prefill", 256, 2, "heavy", (3, 6)): [(64, 32, 8, 2)],  # 128x32: loop spills under 3.6 with key padding
    ("prefill", 256, 2, "heavy", (3, 9)): [(128, 32, 8, 2), (64, 32, 8, 2)],
    ("prefill", 256, 4, "none", (3, 9)): [(64, 16, 8, 2)],
}


@pytest.mark.parametrize("case", list(EXPECTED_TMA), ids=str)
def test_tma_candidates_match_the_compile_reports(case):
    bucket, head_dim, elt_bytes, level, version = case
    got = candidate_configs(bucket, head_dim=head_dim, elt_bytes=elt_bytes, loop_level=level, triton_version=version,
                            tma=True)
    assert tiles(got) == EXPECTED_TMA[case]


def test_the_tma_lists_only_add_tiles_at_d128():
    """TMA loads keep every tile the pointer loads keep (they hold fewer registers), and differ only at
    D = 128 (padded or not); no 128-row tile is kept with the heavy level."""
    for key, pointer_tiles in autotune.NO_SPILL_TILES.items():
        tma_tiles = autotune.NO_SPILL_TILES_TMA.get(key, pointer_tiles)
        assert pointer_tiles <= tma_tiles, key
    assert {key[0] for key in autotune.NO_SPILL_TILES_TMA} == {128}
    for padded in (False, True):  # 128-row tiles spill with the heavy level (long statistics; key padding)
        assert all(bm == 64 for bm, *_ in autotune.NO_SPILL_TILES_TMA[(128, "heavy", padded)])


# Shared memory of sm_90 compiles (``CompiledKernel.metadata.shared``, the figure the driver
# checks at launch), Triton 3.9 and 3.6 alike: (head dim, bytes per element, tile) -> bytes. From
# bench/results/compile-sm90-*.json, and the fp32 D = 256 tiles from the H200's refusal (64x32
# w8 s2: 262144 > 232448) and the fp32 report of the fix (compile-sm90-2026-12-04-fp32-smem-*).
MEASURED_SMEM = {
    (64, 2, (128, 128, 8, 2)): 81920, (128, 2, (128, 64, 8, 2)): 98304, (128, 2, (64, 32, 4, 2)): 49152,
    (256, 2, (64, 32, 8, 2)): 98304, (256, 2, (64, 64, 8, 2)): 163840,
    (64, 4, (64, 32, 4, 2)): 65536, (128, 4, (64, 32, 4, 2)): 131072, (128, 4, (64, 64, 4, 2)): 196608,
    (256, 4, (64, 32, 8, 2)): 262144, (256, 4, (64, 32, 4, 2)): 262144, (256, 4, (64, 16, 8, 2)): 196608,
    (256, 4, (64, 16, 8, 3)): 229376, (256, 4, (64, 32, 8, 1)): 196608,
}


@pytest.mark.parametrize("case", list(MEASURED_SMEM), ids=str)
def test_shared_memory_model_covers_the_compiled_kernels(case):
    """The model never under-estimates a compile (the H200 refused an fp32 tile it under-estimated
    by a whole Q tile), so a tile it keeps fits."""
    head_dim, elt_bytes, (bm, bn, _, st) = case
    assert smem_bytes(bm, bn, st, head_block(head_dim), elt_bytes) >= MEASURED_SMEM[case]


@pytest.mark.parametrize("version", VERSIONS, ids=str)
@pytest.mark.parametrize("level", LOOP_LEVELS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_no_fp32_candidate_is_a_tile_the_gpu_refused(head_dim, level, version):
    """fp32 at any head dim, prefill or decode: no candidate needs more shared memory than sm_90
    has by the compiled figures (where measured) and by the model."""
    for bucket in ("prefill", "decode"):
        for c in candidate_configs(bucket, head_dim=head_dim, elt_bytes=4, loop_level=level, triton_version=version):
            bm, bn, _, st = tile_of(c)
            measured = MEASURED_SMEM.get((head_block(head_dim), 4, tile_of(c)), 0)
            assert max(measured, smem_bytes(bm, bn, st, head_block(head_dim), 4)) <= SMEM_LIMIT_BYTES, tile_of(c)


SM80_SMEM_LIMIT = 163 * 1024  # 166912 B per block on an A100 (sm_90: SMEM_LIMIT_BYTES = 227 KB = 232448 B)


class CudaStandIn:
    """What the pruners read of a launch's Q: its device and element size (no GPU needed)."""

    def __init__(self, elt_bytes: int):
        self.device, self.elt_bytes = torch.device("cuda", 0), elt_bytes

    def element_size(self) -> int:
        return self.elt_bytes


# Constexprs that give each loop level (``autotune.loop_level``).
LEVEL_FLAGS = {"none": {}, "modifiers": {"HAS_WINDOW": True}, "entropy": {"HAS_ENT": True}, "stats": {"HAS_TOK": True},
               "heavy": {"HAS_DIST": True}}


@pytest.fixture
def a100(monkeypatch):
    """A CUDA device 0 with an A100's shared memory, as Triton's driver would report it."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(triton_common, "cuda_smem_limit", lambda index: SM80_SMEM_LIMIT)


def test_the_limit_is_the_launch_devices(a100):
    assert triton_common.device_smem_limit(torch.device("cuda", 0)) == SM80_SMEM_LIMIT
    assert triton_common.device_smem_limit(torch.device("cpu")) == SMEM_LIMIT_BYTES == 232448


def test_every_candidate_fits_an_a100_or_the_launch_is_refused_clearly(a100):
    """Pruned against an A100's limit, every candidate fits it; sm_90's limit alone would keep
    fp32 tiles over it (D = 128 decode 16x64 s3: 212992 B by the model; D = 256 64x16: 196608 B).
    fp32 at D = 256 fits no fused tile on an A100: a ValueError that says what to do."""
    over_sm80_by_sm90 = set()
    for elt_bytes in (2, 4):
        for head_dim in HEAD_DIMS:
            for level in LOOP_LEVELS:
                assert autotune.loop_level(LEVEL_FLAGS[level]) == level
                for bucket in ("prefill", "decode"):
                    nq = 1 if bucket == "decode" else 4096
                    args = dict(Q=CudaStandIn(elt_bytes), Nq=nq, HEAD_DIM=head_dim, **LEVEL_FLAGS[level])
                    for c in candidate_configs(bucket, head_dim=head_dim, elt_bytes=elt_bytes, loop_level=level):
                        if smem_bytes(*tile_of(c)[:2], c.num_stages, head_block(head_dim), elt_bytes) > SM80_SMEM_LIMIT:
                            over_sm80_by_sm90.add((elt_bytes, head_block(head_dim)))
                    if (elt_bytes, head_block(head_dim)) == (4, 256):
                        with pytest.raises(ValueError, match="166912 B of shared memory .* 4-byte inputs at head_dim"):
                            autotune.prune_fused_configs(PREFILL_CONFIGS, args)
                        continue
                    for c in autotune.prune_fused_configs(PREFILL_CONFIGS, args):
                        assert smem_bytes(*tile_of(c)[:2], c.num_stages, head_block(head_dim), elt_bytes) <= SM80_SMEM_LIMIT
    assert over_sm80_by_sm90 == {(4, 128), (4, 256)}


def test_fp32_at_head_dim_256_on_an_a100_runs_on_the_torch_backend(a100):
    """No fused tile fits: backend="auto" routes such calls to torch (with a warning), "triton"
    refuses them, before any launch."""
    assert not autotune.fused_fits(head_dim=256, elt_bytes=4, smem_limit=SM80_SMEM_LIMIT)
    assert autotune.fused_fits(head_dim=256, elt_bytes=4, smem_limit=SMEM_LIMIT_BYTES)
    assert autotune.fused_fits(head_dim=256, elt_bytes=2, smem_limit=SM80_SMEM_LIMIT)
    assert autotune.fused_fits(head_dim=128, elt_bytes=4, smem_limit=SM80_SMEM_LIMIT)
    feature = ["fp32 over shared memory"]
    with pytest.warns(UserWarning, match="fp32 over shared memory"):
        assert dispatch.resolve_backend("auto", torch.device("cuda", 0), feature) == "torch"
    with pytest.raises(NotImplementedError, match="fp32 over shared memory"):
        dispatch.resolve_backend("triton", torch.device("cuda", 0), feature)


def test_split_candidates_fit_an_a100(a100):
    for elt, head_dim in ((2, 256), (4, 128), (4, 256)):
        q = CudaStandIn(elt)
        for c in autotune.prune_split_configs(SPLIT_CONFIGS, {"Q": q}, BLOCK_D=head_block(head_dim), BLOCK_M=16,
                                              split_len=512):
            assert smem_bytes(16, c.kwargs["BLOCK_N"], c.num_stages, head_block(head_dim), elt) <= SM80_SMEM_LIMIT


@pytest.mark.parametrize("case", list(EXPECTED), ids=str)
def test_candidates_match_the_compile_reports(case):
    bucket, head_dim, elt_bytes, level, version = case
    got = candidate_configs(bucket, head_dim=head_dim, elt_bytes=elt_bytes, loop_level=level, triton_version=version)
    assert tiles(got) == EXPECTED[case]


def test_the_bound_binds_and_the_lists_hold_more():
    """The lists are longer than the bound (so the bound is what limits a launch), and the
    current Triton's branch is the one ``keep_config`` uses by default."""
    assert len(PREFILL_CONFIGS) > MAX_PREFILL_CONFIGS == 4 and len(DECODE_CONFIGS) == MAX_DECODE_CONFIGS == 3
    kept = [c for c in PREFILL_CONFIGS if autotune.keep_config(c, head_dim=64, elt_bytes=2, loop_level="none")]
    assert len(kept) == 6 and len(candidate_configs("prefill", head_dim=64, elt_bytes=2, loop_level="none")) == 4
    old = candidate_configs("prefill", head_dim=128, elt_bytes=2, loop_level="stats", triton_version=(3, 6))
    here = candidate_configs("prefill", head_dim=128, elt_bytes=2, loop_level="stats")
    assert (here == old) == (autotune.TRITON_VERSION < (3, 7))


@pytest.mark.parametrize("flags, level", [
    ({}, "none"), ({"N_OFFSETS": 3, "N_PROBES": 2, "HAS_SINKS": True}, "none"), ({"HAS_WINDOW": True}, "modifiers"),
    ({"HAS_ENT": True}, "entropy"), ({"HAS_TOK": True}, "stats"),
    ({"HAS_TOK": True, "HAS_ENT": True}, "stats"), ({"HAS_TOP1": True}, "heavy"),
    # a softcap (one tanh.approx per score) keeps its level's tiles: compile-sm90-2026-12-05-capped-*
    ({"HAS_SOFTCAP": True}, "modifiers"), ({"HAS_SOFTCAP": True, "HAS_WINDOW": True}, "modifiers"),
    ({"HAS_SOFTCAP": True, "HAS_ENT": True}, "entropy"), ({"HAS_SOFTCAP": True, "HAS_TOK": True}, "heavy"),
    ({"HAS_SOFTCAP": True, "HAS_DIST": True}, "heavy"), ({"HAS_WINDOW": True, "HAS_ENT": True}, "heavy")])
def test_loop_level(flags, level):
    assert autotune.loop_level(flags) == level


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("head_dim", [40, 64, 128, 256])
def test_split_pruner_keeps_at_most_three_configs_that_fit(dtype, head_dim):
    """At most ``MAX_DECODE_CONFIGS``, never over the shared-memory budget, for fp32 only the small
    key tiles that compiled without spills (BLOCK_N x BLOCK_D <= 2048, or 16 keys), for 16-bit
    inputs 32+ keys and 3+ stages; the largest key tiles first."""
    bd, bm = head_block(head_dim), 16
    q = torch.zeros(1, dtype=dtype)
    kept = autotune.prune_split_configs(SPLIT_CONFIGS, {"Q": q}, BLOCK_D=bd, BLOCK_M=bm, split_len=512)
    assert 1 <= len(kept) <= MAX_DECODE_CONFIGS
    elt = q.element_size()
    for c in kept:
        bn = c.kwargs["BLOCK_N"]
        assert elt * (bm * bd + 2 * bn * bd * c.num_stages) <= SMEM_LIMIT_BYTES
        assert (bn * bd <= 2048 or bn == 16) if elt == 4 else (bn >= 32 and c.num_stages >= 3)
    block_n = [c.kwargs["BLOCK_N"] for c in kept]
    assert block_n == sorted(block_n, reverse=True)


@pytest.mark.parametrize("split_len", [16, 32, 48, 96, 128, 160, 512, 4096])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("head_dim", [16, 40, 64, 128, 256])
def test_split_key_tiles_divide_the_split_length(head_dim, dtype, split_len):
    """As on a GPU (the interpreter's fixed 16-key tile divides every length a test passes): the
    autotuner tries only key tiles that divide ``split_len`` (a 128-key tile and 32-key splits
    was refused on an H200), the kept ones where any divides, and the same as without the
    restriction when the largest tile divides."""
    q = torch.zeros(1, dtype=dtype)
    got = autotune.prune_split_configs(SPLIT_CONFIGS, {"Q": q}, BLOCK_D=head_block(head_dim), BLOCK_M=16,
                                       split_len=split_len)
    assert 1 <= len(got) <= MAX_DECODE_CONFIGS and all(split_len % c.kwargs["BLOCK_N"] == 0 for c in got)
    kept = autotune.split_kept_configs(SPLIT_CONFIGS, block_d=head_block(head_dim), block_m=16,
                                       elt_bytes=q.element_size())
    dividing = [c for c in kept if split_len % c.kwargs["BLOCK_N"] == 0]
    assert got == (dividing[:MAX_DECODE_CONFIGS] or [min((c for c in SPLIT_CONFIGS if split_len % c.kwargs["BLOCK_N"] == 0),
                                                         key=lambda c: (c.kwargs["BLOCK_N"], c.num_stages))])
    if split_len % 128 == 0:
        assert got == kept[:MAX_DECODE_CONFIGS]
    assert autotune.max_key_tile(split_len) == max(bn for bn in (16, 32, 64, 128) if split_len % bn == 0)


def test_split_32_on_a_gpu_tries_32_key_tiles():
    """The H200's case: 16-bit inputs, D = 16, 32-key splits: 32-key tiles with 3 and 4 stages."""
    got = autotune.prune_split_configs(SPLIT_CONFIGS, {"Q": torch.zeros(1, dtype=torch.bfloat16)}, BLOCK_D=16,
                                       BLOCK_M=16, split_len=32)
    assert [(c.kwargs["BLOCK_N"], c.num_stages) for c in got] == [(32, 3), (32, 4)]


@pytest.mark.parametrize("split_len", [0, -16, 8, 24, 100])
def test_split_lengths_no_key_tile_divides_are_refused(split_len):
    assert autotune.max_key_tile(split_len) == 0
    assert autotune.split_candidates(SPLIT_CONFIGS, block_d=64, block_m=16, elt_bytes=2, split_len=split_len) == []
    with pytest.raises(ValueError, match=f"split_len must be a positive multiple of a key tile .*got {split_len}"):
        autotune.prune_split_configs(SPLIT_CONFIGS, {"Q": torch.zeros(1, dtype=torch.float16)}, BLOCK_D=64, BLOCK_M=16,
                                     split_len=split_len)


def test_split_tuner_tunes_split_lengths_with_different_tiles_apart():
    """A choice made for 512-key splits (a 128-key tile) is not reused for 32-key splits of the
    same lengths: the largest dividing tile is part of the key; the kernel never sees it."""
    def split_stand_in(Q, split_len, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pass

    kernel = RecordingKernel(split_stand_in)
    tuner = autotune.split_tuner(kernel, do_bench=lambda call, quantiles: (call(), [1.0] * len(quantiles))[1])
    q = torch.zeros(1, dtype=torch.float16)
    for split_len in (512, 32, 512):
        tuner[(1,)](q, split_len, BLOCK_D=64, BLOCK_M=16, **autotune.split_tuning_keywords(1, 4096, split_len))
        assert split_len % kernel.launches[-1]["BLOCK_N"] == 0
    assert {dict(zip(tuner.keys, key))[autotune.KEY_TILE_ARG] for key in tuner.cache} == {128, 32}
    assert not any(k in launch_kw for launch_kw in kernel.launches for k in autotune.TUNING_ONLY_ARGS)


@pytest.mark.parametrize("head_dim, elt_bytes, expected", [
    (64, 2, [(128, 3), (128, 4), (64, 3)]),
    (128, 2, [(128, 3), (64, 3), (64, 4)]),  # 128 keys x 4 stages is over shared memory at D = 128
    (256, 2, [(64, 3), (32, 3), (32, 4)]),
    (64, 4, [(32, 3), (32, 4), (32, 2)]),
    (128, 4, [(16, 2), (16, 3), (16, 4)]),
])
def test_split_candidates_match_the_split_report(head_dim, elt_bytes, expected):
    q = torch.zeros(1, dtype=torch.float16 if elt_bytes == 2 else torch.float32)
    kept = autotune.prune_split_configs(SPLIT_CONFIGS, {"Q": q}, BLOCK_D=head_block(head_dim), BLOCK_M=16,
                                        split_len=4096)
    assert [(c.kwargs["BLOCK_N"], c.num_stages) for c in kept] == expected


# ----------------------------------------------------------------------------------------------
# Length buckets and the tuners.

def test_length_buckets_are_powers_of_two():
    assert [length_bucket(n) for n in (0, 1, 2, 3, 16, 17, 300, 512, 513, 131072)] == \
        [1, 1, 2, 4, 16, 32, 512, 512, 1024, 131072]
    assert length_buckets(300, 131072) == {"Q_LEN_BUCKET": 512, "K_LEN_BUCKET": 131072}


def stand_in(Q, Nq, Nk, HEAD_DIM: tl.constexpr, HAS_ENT: tl.constexpr, FP32_INPUT: tl.constexpr,
             BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The shape of the fused kernel's signature, for the tuner's key and pruner."""


class RecordingKernel:
    """What the autotuner wraps, recording every launch's keywords instead of launching."""

    def __init__(self, fn):
        self.fn = fn
        self.arg_names = list(inspect.signature(fn).parameters)
        self.launches = []

    def run(self, *args, grid, warmup, **kwargs):
        self.launches.append(kwargs)


def timed_by_block_m(kernel):
    """A stand-in benchmark: runs the launch once, and times it by its tile (128-row tiles win)."""
    def do_bench(kernel_call, quantiles):
        kernel_call()
        return [1.0 / kernel.launches[-1]["BLOCK_M"]] * len(quantiles)
    return do_bench


def launch(tuner, q, n_q, n_k, **flags):
    tuner[(1,)](q, n_q, n_k, **dict(HEAD_DIM=64, HAS_ENT=False, FP32_INPUT=False, BLOCK_D=64, **flags),
                **length_buckets(n_q, n_k))


def test_fused_tuner_tunes_once_per_length_bucket():
    """Each new power-of-two bucket of (Nq, Nk) benchmarks the bounded candidates once; a length
    of a bucket already tuned reuses its choice; the kernel never sees the bucket keywords."""
    kernel = RecordingKernel(stand_in)
    tuner = autotune.fused_tuner(kernel, do_bench=timed_by_block_m(kernel))
    q = torch.zeros(1, dtype=torch.float16)
    launch(tuner, q, 300, 300)  # tunes bucket (512, 512): 4 candidates, then the chosen one runs
    assert len(kernel.launches) == MAX_PREFILL_CONFIGS + 1
    assert kernel.launches[-1]["BLOCK_M"] == 128 and kernel.launches[-1]["BLOCK_N"] == 128
    launch(tuner, q, 500, 400)  # same bucket: no tuning
    assert len(kernel.launches) == MAX_PREFILL_CONFIGS + 2
    launch(tuner, q, 300, 131072)  # a longer key bucket: tuned again
    assert len(kernel.launches) == 2 * MAX_PREFILL_CONFIGS + 3
    launch(tuner, q, 1, 300)  # decode bucket: the 16-row tiles
    assert {c["BLOCK_M"] for c in kernel.launches[-4:]} == {16}
    assert not any(k in launch_kw for launch_kw in kernel.launches for k in autotune.LENGTH_BUCKET_ARGS)
    buckets = [(dict(zip(tuner.keys, key))["Q_LEN_BUCKET"], dict(zip(tuner.keys, key))["K_LEN_BUCKET"])
               for key in tuner.cache]
    assert sorted(buckets) == [(1, 512), (512, 512), (512, 131072)]


def test_tuning_keys_cover_every_flag_and_both_buckets():
    from circuit_stats.kernels import triton_attention as ta, triton_decode as td
    from circuit_stats.kernels.triton_common import constexpr_names

    fused = set(constexpr_names(ta.FUSED_KERNEL)) - {"BLOCK_D", "BLOCK_M", "BLOCK_N"}
    assert set(ta.FUSED_TUNER.keys) == fused | set(autotune.LENGTH_BUCKET_ARGS)
    split = set(constexpr_names(td.SPLIT_KERNEL)) - {"BLOCK_N", "DOT_PRECISION"}
    assert set(td.SPLIT_TUNER.keys) == split | set(autotune.TUNING_ONLY_ARGS)
    assert len(ta.FUSED_TUNER.configs) == len(PREFILL_CONFIGS + DECODE_CONFIGS)


def test_tuners_cache_results_across_processes_where_triton_allows():
    """``cache_results`` is on (Triton turns it off under the interpreter, where nothing is timed)."""
    from triton import knobs

    kernel = RecordingKernel(stand_in)
    with knobs.runtime.scope():
        knobs.runtime.interpret = False
        assert autotune.fused_tuner(kernel).cache_results and autotune.split_tuner(kernel).cache_results
        knobs.runtime.interpret = True
        assert not autotune.fused_tuner(kernel).cache_results


def test_the_real_tuner_runs_the_kernel_with_its_choice(seed, poison_outputs):
    """The fused kernel through its autotuner (as on a GPU, with a stand-in benchmark that times
    nothing, so the first candidate, 128x128, wins): the bucket keywords never reach the kernel,
    and its output matches the float64 reference."""
    from circuit_stats.kernels import attention_with_stats_naive, triton_attention
    from circuit_stats.kernels.request import StatsRequest
    from circuit_stats.kernels.side_inputs import SideInputs
    from kernel_cases import OUT_TOL, make_inputs

    tuner = autotune.fused_tuner(triton_attention.FUSED_KERNEL, do_bench=lambda call, quantiles: [1.0] * len(quantiles))
    q, k, v, _, _ = make_inputs(1, 2, 1, 37, 37, 64, torch.float16, None)
    launch = triton_attention.launch_arguments(q, k, v, StatsRequest(scale=0.125), SideInputs.build(
        batch=1, k_len=37, device=q.device))
    grid = lambda meta: (triton.cdiv(37, meta["BLOCK_M"]), 2)  # noqa: E731
    triton_attention.with_flags(tuner)[grid](**launch.args, **launch.constexprs, **length_buckets(37, 37))
    assert tile_of(tuner.best_config) == (128, 128, 8, 2)
    ref_out, ref = attention_with_stats_naive(q.double(), k.double(), v.double(), scale=0.125)
    assert (launch.out.double() - ref_out).abs().max().item() <= OUT_TOL[torch.float16]
    assert (launch.stats.lse.double() - ref.lse).abs().max().item() <= 1e-3
