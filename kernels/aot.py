"""Ahead-of-time compilation of the fused kernel for NVIDIA GPUs, on a machine with no GPU.

Triton compiles for a GPU without a driver: the wheel ships ``ptxas``, ``cuobjdump`` and
``nvdisasm``; only launching needs the driver. This module

* describes a launch by shapes only (:class:`CompileVariant`), builds its arguments with the
  launcher's own :func:`kernels.triton_attention.launch_arguments` on shape-only stand-ins
  (:class:`TensorSpec`), and runs Triton's argument binder on them, so that the signature,
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

from . import triton_attention as ta
from .sass_loops import mma_loops
from .side_inputs import SideInputs

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Statistics sets: "none" (lse + sink only, always returned), "point" (+ 3 fixed offsets and 2
# probes: epilogue-only work), "all" (+ token-match induction/duplicate and entropy), "long"
# (point + distance, local, top1 and span: long-context profiling), "modifiers" (all + a sliding
# window, logit softcap and learned sinks: Gemma 2 / gpt-oss layers), "full" (everything at once),
# "window" (none + a sliding window and learned sinks: such a layer outside record()).
STATS_SETS = ("none", "point", "all", "long", "modifiers", "full", "window")
ARCHS = (90, 80)


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

    def values(self, values: Sequence[int], dtype: torch.dtype) -> TensorSpec:
        return TensorSpec(dtype, (len(values),))


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

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.stats not in STATS_SETS:
            raise ValueError(f"stats must be one of {STATS_SETS}, got {self.stats!r}")

    @property
    def name(self) -> str:
        pad = " pad" if self.padded else ""
        return f"D{self.head_dim} {self.dtype} {self.stats}{pad} Nq{self.q_len} Nk{self.k_len}"


def variant_launch(variant: CompileVariant) -> ta.KernelLaunch:
    """The launcher's arguments for ``variant``, built by ``launch_arguments`` on stand-ins."""
    B, Hq, Hkv, Nq, Nk, D = (variant.batch, variant.heads, variant.kv_heads, variant.q_len,
                             variant.k_len, variant.head_dim)
    dtype, i32 = DTYPES[variant.dtype], torch.int32
    q = TensorSpec(dtype, (B, Hq, Nq, D))
    k, v = TensorSpec(dtype, (B, Hkv, Nk, D)), TensorSpec(dtype, (B, Hkv, Nk, D))
    stats_all = variant.stats in ("all", "modifiers", "full")
    stats_point = variant.stats != "none"
    stats_long = variant.stats in ("long", "full")
    modifiers = variant.stats in ("modifiers", "full")
    windowed = modifiers or variant.stats == "window"
    side = SideInputs(
        batch=B, k_len=Nk,
        key_padding_mask=TensorSpec(torch.bool, (B, Nk)) if variant.padded else None,
        first_key=TensorSpec(i32, (B,)),
        token_ids=TensorSpec(i32, (B, Nk)) if stats_all else None,
        prev_token_ids=TensorSpec(i32, (B, Nk)) if stats_all else None,
        probe_keys=TensorSpec(i32, (B, 2)) if stats_point else None,
        span=TensorSpec(torch.int64, (B, 2)) if stats_long else None,
    )
    return ta.launch_arguments(q, k, v, scale=D ** -0.5, side=side, offsets=(1, 2, 3) if stats_point else (),
                               entropy=stats_all, distance=stats_long, local_window=64 if stats_long else None,
                               top1=stats_long, window=4096 if windowed else None,
                               softcap=50.0 if modifiers else None,
                               sinks=TensorSpec(torch.float32, (Hq,)) if windowed else None, tensors=SpecTensors())


def candidate_configs(variant: CompileVariant) -> list[triton.Config]:
    """The configs the autotuner would try for ``variant`` (after pruning)."""
    launch = variant_launch(variant)
    c = launch.constexprs
    return ta.candidate_configs(launch.bucket, head_dim=variant.head_dim,
                                elt_bytes=DTYPES[variant.dtype].itemsize, loop_level=ta.loop_level(c))


def kernel_function() -> JITFunction:
    """The compilable kernel; a clear error under the interpreter."""
    fn = ta.FUSED_KERNEL
    if not isinstance(fn, JITFunction):
        raise RuntimeError("the kernel cannot be compiled with TRITON_INTERPRET=1 set (it is an interpreted "
                           "function then); run `python -m circuit_stats.kernels.aot` in a process without it")
    return fn


def target(arch: int):
    from triton.backends.compiler import GPUTarget

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch}")
    return GPUTarget("cuda", arch, 32)


def compile_launch(launch: ta.KernelLaunch, config: triton.Config, arch: int) -> tuple[Any, str]:
    """Compile the kernel for ``launch`` with tile ``config`` for ``sm_<arch>``.

    Returns ``(compiled kernel, ptxas -v log)``; raises on a compile error."""
    from triton import knobs
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = kernel_function()
    tgt = target(arch)
    backend = make_backend(tgt)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.constexprs, **config.kwargs, num_warps=config.num_warps,
                  num_stages=config.num_stages, debug=False)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
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
        loop_spill_instructions=sum(loop.get("local_spill", 0) for loop in mma_loops(sass)),
    )


def compile_variant(variant: CompileVariant, config: triton.Config, arch: int) -> tuple[dict, Any]:
    """Compile one variant with one config: ``(row of figures, compiled kernel)``."""
    t0 = time.perf_counter()
    compiled, log = compile_launch(variant_launch(variant), config, arch)
    row = dict(asdict(variant), arch=arch, BLOCK_M=config.kwargs["BLOCK_M"], BLOCK_N=config.kwargs["BLOCK_N"],
               num_warps=config.num_warps, num_stages=config.num_stages)
    row.update(resource_usage(compiled, log), compile_s=round(time.perf_counter() - t0, 1))
    return row, compiled


def config_from(spec: dict) -> triton.Config:
    return triton.Config({"BLOCK_M": spec["BLOCK_M"], "BLOCK_N": spec["BLOCK_N"]},
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
        cfg = {k: spec.pop(k) for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")}
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
