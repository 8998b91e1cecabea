"""Ahead-of-time compilation of the fused kernel for NVIDIA GPUs, on a machine with no GPU.

Triton compiles for a GPU without a driver: the wheel ships ``ptxas``, ``cuobjdump`` and
``nvdisasm``; only launching needs the driver. This module

* describes a launch by shapes only (:class:`CompileVariant`), builds its arguments with the
  launcher's own :func:`kernels.triton_attention.launch_arguments` on shape-only stand-ins
  (:class:`TensorSpec`; absent optional tensors are None, the flags are the launcher's
  ``triton.heuristics`` rules), and runs Triton's argument binder on them, so that the signature,
  constants and alignment hints are exactly those of a real launch with such tensors;
* compiles for ``sm_90`` (Hopper) or ``sm_80`` (Ampere) with ``triton.compile``;
* reads registers, spill bytes, stack, shared memory and tensor-core use from ``ptxas -v`` and
  the SASS (:func:`resource_usage`).

The Triton interpreter (``TRITON_INTERPRET=1``, set by the test suite) replaces ``@triton.jit``
functions by Python ones that cannot be compiled, so compile in a process without it:
``python -m circuit_stats.kernels.aot --arch 90 VARIANT_JSON...`` prints one JSON line per variant
(the compile test does this). Written against triton 3.9.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
import triton
from triton.runtime.jit import JITFunction, MockTensor

from . import autotune
from . import triton_attention as ta
from . import triton_key_mass as tkm
from . import triton_token_match as tm
from .sass_loops import mma_loops
from .request import StatsRequest
from .side_inputs import SideInputs
from .triton_common import derived_flags, head_block

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Statistics sets: "none" (lse + sink only, always returned), "point" (+ 3 fixed offsets and 2
# probes: epilogue-only work), "all" (+ token-match induction/duplicate and entropy), "long"
# (point + distance, local, top1 and span: long-context profiling), "modifiers" (all + a sliding
# window, logit softcap and learned sinks: Gemma 2 / gpt-oss layers), "full" (everything at once),
# "window" (none + a sliding window and learned sinks: such a layer outside record()), "capped"
# ("window" + logit softcap: a Gemma 2 local layer outside record()), "all-capped" (all + softcap
# and learned sinks, no window: a Gemma 2 global layer inside record()).
STATS_SETS = ("none", "point", "all", "long", "modifiers", "full", "window", "capped", "all-capped")
ARCHS = (90, 80)
KERNELS = ("fused", "split", "combine", "key_mass", "band")


class TensorSpec(MockTensor):
    """Shape-and-dtype stand-in for a contiguous CUDA tensor (data pointer 0, 16-aligned)."""

    def __init__(self, dtype: torch.dtype, shape: Sequence[int]):
        super().__init__(dtype, list(shape))
        self.shape = tuple(int(s) for s in shape)

    def stride(self) -> tuple[int, ...]:
        strides, acc = [], 1
        for size in reversed(self.shape):
            strides.append(acc)
            acc *= max(size, 1)
        return tuple(reversed(strides))

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def to(self, dtype: torch.dtype) -> "TensorSpec":
        return TensorSpec(dtype, self.shape)


class SpecTensors:
    """``launch_arguments``'s allocator for :class:`TensorSpec` launches."""

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> TensorSpec:
        return TensorSpec(dtype, shape)

    def values(self, values: Sequence[int]) -> TensorSpec:
        return TensorSpec(torch.int32, (len(values),))


@dataclass(frozen=True)
class CompileVariant:
    """One launch, by shapes: what the compile test and the compile report compile."""

    head_dim: int
    dtype: str = "bf16"
    stats: str = "none"
    q_len: int = 4096
    k_len: int = 4096
    padded: bool = False
    batch: int = 2
    heads: int = 16
    kv_heads: int = 16
    kernel: str = "fused"  # or "split" / "combine": the split-key decode kernels (q_len <= 16); "key_mass"; "band": token matching

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.stats not in STATS_SETS:
            raise ValueError(f"stats must be one of {STATS_SETS}, got {self.stats!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")

    @property
    def name(self) -> str:
        pad = " pad" if self.padded else ""
        kernel = "" if self.kernel == "fused" else f" {self.kernel}"
        return f"D{self.head_dim} {self.dtype} {self.stats}{pad} Nq{self.q_len} Nk{self.k_len}{kernel}"


def variant_request(variant: CompileVariant) -> tuple[StatsRequest, SideInputs]:
    """The request and side inputs (shape-only stand-ins) of ``variant``'s statistics set. The
    fused "window" variants carry the point statistics too, the decode ones do not (as measured
    in the compile reports). The "key_mass" kernel's variants carry a query weight."""
    B, Nk = variant.batch, variant.k_len
    key_mass = variant.kernel == "key_mass"
    i32 = torch.int32
    stats_all = variant.stats in ("all", "modifiers", "full", "all-capped")
    stats_point = variant.stats != "none" and (variant.kernel == "fused" or variant.stats not in ("window", "capped"))
    stats_long = variant.stats in ("long", "full")
    modifiers = variant.stats in ("modifiers", "full")
    capped = modifiers or variant.stats in ("capped", "all-capped")
    windowed = modifiers or variant.stats in ("window", "capped")
    # Token matching runs in the fused kernel's loop only with TOKEN_MATCH = "loop"; by default the
    # band kernel does it after the main pass (compiled as its own variant, kernel="band").
    token_match = stats_all and (variant.kernel != "fused" or tm.TOKEN_MATCH == "loop")
    side = SideInputs(
        batch=B, k_len=Nk,
        key_padding_mask=TensorSpec(torch.bool, (B, Nk)) if variant.padded else None,
        first_key=TensorSpec(i32, (B,)),
        token_ids=TensorSpec(i32, (B, Nk)) if token_match else None,
        prev_token_ids=TensorSpec(i32, (B, Nk)) if token_match else None,
        probe_keys=TensorSpec(i32, (B, 2)) if stats_point else None,
        span=TensorSpec(torch.int64, (B, 2)) if stats_long else None,
        query_weight=TensorSpec(torch.float32, (B, variant.q_len)) if key_mass else None,
        query_log2_weight=TensorSpec(torch.float32, (B, variant.q_len)) if key_mass else None,
    )
    request = StatsRequest(scale=variant.head_dim ** -0.5, offsets=(1, 2, 3) if stats_point else (),
                           entropy=stats_all, distance=stats_long, local_window=64 if stats_long else None,
                           top1=stats_long, window=4096 if windowed else None, softcap=50.0 if capped else None,
                           sinks=TensorSpec(torch.float32, (variant.heads,)) if windowed or capped else None,
                           key_mass=key_mass)
    return request, side


def variant_inputs(variant: CompileVariant) -> tuple[TensorSpec, TensorSpec, TensorSpec]:
    """``q [B, Hq, Nq, D]``, ``k``, ``v [B, Hkv, Nk, D]`` stand-ins of ``variant``."""
    dtype = DTYPES[variant.dtype]
    kv = (variant.batch, variant.kv_heads, variant.k_len, variant.head_dim)
    return (TensorSpec(dtype, (variant.batch, variant.heads, variant.q_len, variant.head_dim)),
            TensorSpec(dtype, kv), TensorSpec(dtype, kv))


def variant_launch(variant: CompileVariant) -> ta.KernelLaunch:
    """The launcher's arguments for ``variant``, built by ``launch_arguments`` on stand-ins."""
    request, side = variant_request(variant)
    return ta.launch_arguments(*variant_inputs(variant), request, side, tensors=SpecTensors())


DECODE_SPLIT_LEN = 512  # keys per split in the decode compile variants


def decode_launch(variant: CompileVariant) -> tuple[JITFunction, dict]:
    """``(kernel, keyword arguments)`` of the split-decode kernel (``variant.kernel == "split"``) or
    its combine (``"combine"``), built by ``triton_decode``'s own argument builders on stand-ins:
    arguments, constexprs and the flags its heuristics derive (less the tile)."""
    from . import triton_decode as td

    request, side = variant_request(variant)
    flags = request.flags(side)
    q, k, v = variant_inputs(variant)
    B, Hq, Nq, D = q.shape
    f32 = torch.float32
    n_splits, R = -(-variant.k_len // DECODE_SPLIT_LEN), B * Hq * Nq
    part_o = TensorSpec(f32, (n_splits, R, head_block(D)))
    part_s = TensorSpec(f32, (n_splits, R, td.partial_columns(flags)))
    if variant.kernel == "split":
        args, constexprs = td.split_kernel_args(q, k, v, part_o, part_s, side, request=request, flags=flags,
                                                split_len=DECODE_SPLIT_LEN, tensors=SpecTensors())
        return td.SPLIT_KERNEL, {**args, **constexprs, **derived_flags(td.SPLIT_HEURISTICS, args)}
    stats = request.allocate((B, Hq, Nq), side, SpecTensors().empty)
    args, constexprs = td.combine_kernel_args(part_o, part_s, TensorSpec(q.dtype, q.shape), stats, request=request,
                                              flags=flags, n_splits=n_splits, block_r=16)
    return td.COMBINE_KERNEL, {**args, **constexprs, **derived_flags(td.COMBINE_HEURISTICS, args)}


def key_mass_launch(variant: CompileVariant) -> tuple[JITFunction, dict]:
    """``(kernel, keyword arguments)`` of the key-mass pass (``variant.kernel == "key_mass"``),
    built by ``triton_key_mass.key_mass_arguments`` on stand-ins."""
    request, side = variant_request(variant)
    q, k, _ = variant_inputs(variant)
    stats = request.allocate(tuple(q.shape[:3]), side, SpecTensors().empty)
    launch = tkm.key_mass_arguments(q, k, request, side, stats)
    return tkm.KEY_MASS_KERNEL, {**launch.args, **launch.constexprs}


def band_launch(variant: CompileVariant) -> tuple[JITFunction, dict]:
    """``(kernel, keyword arguments)`` of the token-match band kernel (``variant.kernel == "band"``),
    built by ``triton_token_match``'s own argument builder on stand-ins."""
    request, _ = variant_request(variant)
    q, k, _ = variant_inputs(variant)
    B, Hq, Nq, _ = q.shape
    i32, Nk, block_m = torch.int32, variant.k_len, tm.BAND_BLOCK[0]
    per_query, per_order = TensorSpec(i32, (B, Nq)), TensorSpec(i32, (B, Nk + tm.ORDER_PAD))
    bands = tm.TokenBands(block_m=block_m, q_order=per_query, intervals=TensorSpec(i32, (B, Nq, 4)),
                          dup_order=per_order, ind_order=per_order, ranges=TensorSpec(i32, (B, triton.cdiv(Nq, block_m), 4)))
    row = TensorSpec(torch.float32, (B, Hq, Nq))
    args, constexprs = tm.band_launch_arguments(q, k, row, row, row, bands, request)
    return tm.BAND_KERNEL, {**dict(zip(tm.BAND_KERNEL.arg_names, args)), **constexprs}


def candidate_configs(variant: CompileVariant) -> list[triton.Config]:
    """The configs the autotuner would try for ``variant`` (after pruning)."""
    if variant.kernel == "key_mass":
        return tkm.candidate_configs("decode" if variant.q_len <= 16 else "prefill", head_dim=variant.head_dim,
                                     elt_bytes=DTYPES[variant.dtype].itemsize)
    if variant.kernel == "band":  # one fixed config
        return [tm.band_config()]
    if variant.kernel != "fused":
        from . import triton_decode as td

        _, c = decode_launch(variant)
        if variant.kernel == "combine":
            return [triton.Config({}, num_warps=td.combine_warps(c), num_stages=1)]
        return autotune.prune_split_configs(autotune.SPLIT_CONFIGS, {"Q": torch.empty(0, dtype=DTYPES[variant.dtype])},
                                            BLOCK_D=c["BLOCK_D"], BLOCK_M=c["BLOCK_M"], split_len=c["split_len"])
    launch = variant_launch(variant)
    flags = launch.flags()
    return autotune.candidate_configs(launch.bucket, head_dim=variant.head_dim,
                                      elt_bytes=DTYPES[variant.dtype].itemsize,
                                      loop_level=autotune.loop_level(flags), tma=flags["TMA_KV"])


def variant_kernel(variant: CompileVariant) -> tuple[JITFunction, dict]:
    """``(kernel, keyword arguments)`` of ``variant``'s launch: every parameter but the tile."""
    if variant.kernel == "fused":
        launch = variant_launch(variant)
        return kernel_function(launch.bucket), {**launch.args, **launch.flags()}
    if variant.kernel == "key_mass":
        return key_mass_launch(variant)
    if variant.kernel == "band":
        return band_launch(variant)
    return decode_launch(variant)


def specialization(variant: CompileVariant, config: triton.Config, arch: int = 90) -> str:
    """What Triton's argument binder specialises ``variant``'s launch on (with ``config``): two
    launches share a compiled kernel iff these are equal (the JIT cache key, less the source)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn, kwargs = variant_kernel(variant)
    binder = create_function_from_signature(fn.signature, fn.params, make_backend(target(arch)))
    _, spec, _ = binder(**kwargs, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages,
                        debug=False)
    return repr(spec)


def kernel_function(bucket: str = "long") -> JITFunction:
    """The compilable fused kernel of autotune ``bucket``; a clear error under the interpreter."""
    fn = ta.fused_kernel(bucket)
    if not isinstance(fn, JITFunction):
        raise RuntimeError("the kernel cannot be compiled with TRITON_INTERPRET=1 set (it is an interpreted "
                           "function then); run `python -m circuit_stats.kernels.aot` in a process without it")
    return fn


def target(arch: int):
    from triton.backends.compiler import GPUTarget

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch}")
    return GPUTarget("cuda", arch, 32)


def compile_kernel(fn: JITFunction, kwargs: dict, config: triton.Config, arch: int) -> tuple[Any, str]:
    """Compile ``fn`` for these arguments (every parameter but the tile, by name) with ``config``
    for ``sm_<arch>``.

    Returns ``(compiled kernel, ptxas -v log)``; raises on a compile error."""
    from triton import knobs
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    if not isinstance(fn, JITFunction):
        raise RuntimeError("the kernel cannot be compiled with TRITON_INTERPRET=1 set (it is an interpreted "
                           "function then); run `python -m circuit_stats.kernels.aot` in a process without it")
    tgt = target(arch)
    backend = make_backend(tgt)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(kwargs, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages, debug=False)
    bound_args, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    log = io.StringIO()
    with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v's report
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=tgt, options=options.__dict__)
    return compiled, log.getvalue()


def resource_usage(compiled: Any, ptxas_log: str) -> dict:
    """Registers, spills, stack and shared memory per ptxas; tensor-core instructions and spill
    instructions (``STL``/``LDL``) inside the key loops per SASS."""
    def num(pattern: str) -> Optional[int]:
        m = re.search(pattern, ptxas_log)
        return int(m.group(1)) if m else None

    sass = compiled.asm["sass"]
    return dict(
        registers=num(r"Used (\d+) registers"),
        spill_store_bytes=num(r"(\d+) bytes spill stores") or 0,
        spill_load_bytes=num(r"(\d+) bytes spill loads") or 0,
        stack_frame_bytes=num(r"(\d+) bytes stack frame") or 0,
        shared_bytes=compiled.metadata.shared,
        hgmma=len(re.findall(r"\bHGMMA\.", sass)),  # Hopper warpgroup MMA (wgmma)
        hmma=len(re.findall(r"\bHMMA\.", sass)),    # mma.sync (Ampere-style)
        mufu_tanh=len(re.findall(r"\bMUFU\.TANH\b", sass)),  # the softcap's tanh.approx (16-bit inputs)
        loop_spill_instructions=sum(loop.get("local_spill", 0) for loop in mma_loops(sass)),
    )


def compile_variant(variant: CompileVariant, config: triton.Config, arch: int) -> tuple[dict, Any]:
    """Compile one variant with one config: ``(row of figures, compiled kernel)``."""
    t0 = time.perf_counter()
    compiled, log = compile_kernel(*variant_kernel(variant), config, arch)
    row = dict(asdict(variant), arch=arch, BLOCK_M=config.kwargs.get("BLOCK_M"), BLOCK_N=config.kwargs.get("BLOCK_N"),
               num_warps=config.num_warps, num_stages=config.num_stages)
    row.update(resource_usage(compiled, log), compile_s=round(time.perf_counter() - t0, 1))
    return row, compiled


def config_from(spec: dict) -> triton.Config:
    return triton.Config({k: spec[k] for k in ("BLOCK_M", "BLOCK_N") if spec.get(k) is not None},
                         num_warps=spec["num_warps"], num_stages=spec["num_stages"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Compile kernel variants for sm_<arch> without a GPU; one JSON "
                                 "line of figures (or of the error) per variant.")
    ap.add_argument("--arch", type=int, default=90, choices=ARCHS)
    ap.add_argument("variants", nargs="+", help="JSON objects: CompileVariant fields plus BLOCK_M, BLOCK_N, "
                    "num_warps, num_stages")
    a = ap.parse_args(argv)
    failed = False
    for text in a.variants:
        spec = json.loads(text)
        cfg = {k: spec.pop(k, None) for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")}
        variant = CompileVariant(**spec)
        try:
            row, _ = compile_variant(variant, config_from(cfg), a.arch)
        except Exception as e:  # report and go on: one JSON line per variant
            failed = True
            row = dict(asdict(variant), arch=a.arch, **cfg, error=f"{type(e).__name__}: {e}"[-2000:])
        print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.exit(main())
