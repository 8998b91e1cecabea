"""Pinned Triton configs: an environment variable or ``pin_config`` fixes the config of every
launch of a kernel, instead of autotuning (``autotune``).

* ``CIRCUIT_STATS_TRITON_CONFIG``: the fused kernel, e.g. ``BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2``;
* ``CIRCUIT_STATS_TRITON_SPLIT_CONFIG``: the split-decode kernel, e.g. ``BLOCK_N=64,num_warps=4,num_stages=3``;
* ``pin_config("fused" | "split", spec)``: the same from Python (over the variable; ``None`` unpins).

A pin must name a config of the kernel's list (``autotune.PREFILL_CONFIGS`` and
``DECODE_CONFIGS``, or ``SPLIT_CONFIGS``) and be kept by each launch: it fits shared memory and is
measured spill-free for the launch's head dim, statistics and dtype (``autotune.keep_config``,
``split_kept_configs``). Otherwise a ``ValueError`` names the variable (or the call) and what was
expected, before the launch; ``check_pins`` parses them up front (the command line does, before a
model loads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import triton

from .autotune import (DECODE_CONFIGS, PREFILL_CONFIGS, SPLIT_CONFIGS, keep_config, loop_level, split_kept_configs,
                       tile_of)
from .triton_common import SMEM_LIMIT_BYTES, head_block, smem_bytes

PIN_ENV = {"fused": "CIRCUIT_STATS_TRITON_CONFIG", "split": "CIRCUIT_STATS_TRITON_SPLIT_CONFIG"}
PIN_KEYS = {"fused": ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"), "split": ("BLOCK_N", "num_warps", "num_stages")}
PIN_EXAMPLE = {"fused": "BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2",
               "split": "BLOCK_N=64,num_warps=4,num_stages=3"}
ConfigSpec = Union[str, Mapping[str, int], triton.Config, None]


@dataclass(frozen=True)
class Pin:
    """A pinned config and where it came from (for error messages)."""

    config: triton.Config
    source: str


_PINS: dict[str, Pin] = {}  # set by pin_config; they take precedence over the environment


def kernel_configs(kernel: str) -> list[triton.Config]:
    """Every config the kernel's autotuner knows (``"fused"`` or ``"split"``)."""
    return PREFILL_CONFIGS + DECODE_CONFIGS if kernel == "fused" else SPLIT_CONFIGS


def config_values(cfg: triton.Config) -> dict[str, int]:
    """A config as ``{tile parameter or launch option: value}``."""
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def config_text(cfg: triton.Config) -> str:
    """``BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2``: the pin syntax."""
    return ",".join(f"{k}={v}" for k, v in config_values(cfg).items())


def spec_values(spec: Union[str, Mapping[str, int], triton.Config], kernel: str, source: str) -> dict[str, int]:
    """The ``{key: int}`` a pin spec names; ``ValueError`` naming ``source`` if it is malformed."""
    if isinstance(spec, triton.Config):
        return config_values(spec)
    items = dict(spec).items() if isinstance(spec, Mapping) else (
        tuple(part.partition("=")[::2]) for part in spec.split(","))
    values = {}
    for key, value in items:
        try:
            values[str(key).strip()] = int(str(value).strip())
        except ValueError:
            raise ValueError(f"{source}: expected KEY=INTEGER items separated by commas, e.g. {PIN_EXAMPLE[kernel]}; "
                             f"{str(key).strip()!r} has no integer value") from None
    return values


def parse_config(kernel: str, spec: ConfigSpec, source: str) -> Optional[triton.Config]:
    """The config of ``kernel``'s list that ``spec`` names (``None``/empty: no pin).

    ``spec``: ``"BLOCK_M=64,BLOCK_N=32,num_warps=4,num_stages=2"``, a mapping of those keys, or a
    ``triton.Config``. ``ValueError`` naming ``source`` for an unknown or missing key, a value
    that is not an integer, or a config that is not in the kernel's list."""
    if kernel not in PIN_KEYS:
        raise ValueError(f"kernel must be one of {tuple(PIN_KEYS)}, got {kernel!r}")
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    values, expected = spec_values(spec, kernel, source), PIN_KEYS[kernel]
    unknown, missing = sorted(set(values) - set(expected)), [k for k in expected if k not in values]
    if unknown or missing:
        wrong = "; ".join(f"{what}: {', '.join(names)}" for what, names in (("unknown", unknown), ("missing", missing))
                          if names)
        raise ValueError(f"{source}: expected the keys {', '.join(expected)} (e.g. {PIN_EXAMPLE[kernel]}); {wrong}")
    for cfg in kernel_configs(kernel):
        if config_values(cfg) == values:
            return cfg
    known = " | ".join(config_text(c) for c in kernel_configs(kernel))
    raise ValueError(f"{source}: {spec_text(values)} is not a config of the {kernel} kernel; known: {known}")


def spec_text(values: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def pin_config(kernel: str, spec: ConfigSpec) -> None:
    """Pin the config of every later launch of ``kernel`` (``"fused"`` or ``"split"``) in this
    process, over the environment variable (``PIN_ENV``); ``None`` removes the pin. Checked here
    against the kernel's list, and at each launch against what that launch keeps."""
    source = f"pin_config({kernel!r}, {spec!r})"
    cfg = parse_config(kernel, spec, source)
    if cfg is None:
        _PINS.pop(kernel, None)
    else:
        _PINS[kernel] = Pin(cfg, source)


def pinned(kernel: str, env: Optional[Mapping[str, str]] = None) -> Optional[Pin]:
    """The pin of ``kernel`` in force: ``pin_config``'s, else the environment variable's, else None."""
    if kernel in _PINS:
        return _PINS[kernel]
    text = (os.environ if env is None else env).get(PIN_ENV[kernel], "")
    source = f"{PIN_ENV[kernel]}={text!r}"
    cfg = parse_config(kernel, text, source)
    return None if cfg is None else Pin(cfg, source)


PIN_ENV_PREFIX = "CIRCUIT_STATS_TRITON_"


def check_pins(env: Optional[Mapping[str, str]] = None) -> None:
    """Parse every pin in force, and refuse an unknown ``CIRCUIT_STATS_TRITON_*`` variable (a
    misspelt pin would otherwise be ignored): ``ValueError``. The command line calls this before
    loading a model; the per-launch checks come at the launch."""
    env = os.environ if env is None else env
    unknown = sorted(name for name in env if name.startswith(PIN_ENV_PREFIX) and name not in PIN_ENV.values())
    if unknown:
        raise ValueError(f"unknown environment variable {', '.join(unknown)}: the pinned Triton configs are "
                         f"{' (fused kernel) and '.join(PIN_ENV.values())} (split decode)")
    for kernel in PIN_KEYS:
        pinned(kernel, env)


def fused_pin(*, head_dim: int, elt_bytes: int, constexprs: Mapping[str, Any],
              smem_limit: int = SMEM_LIMIT_BYTES) -> Optional[triton.Config]:
    """The fused kernel's pinned config for this launch, or None; ``ValueError`` (naming the pin's
    source) when the launch does not keep it: over shared memory, or not measured spill-free for
    its head dim, statistics (``loop_level``) and dtype. ``smem_limit``: the device's
    (``triton_common.device_smem_limit``)."""
    pin = pinned("fused")
    if pin is None:
        return None
    level, tma = loop_level(constexprs), constexprs.get("TMA_KV", False)
    if keep_config(pin.config, head_dim=head_dim, elt_bytes=elt_bytes, loop_level=level, tma=tma,
                   smem_limit=smem_limit):
        return pin.config
    check_smem(pin, *tile_of(pin.config)[:2], pin.config.num_stages, head_dim, elt_bytes, smem_limit)
    kept = [config_text(c) for c in kernel_configs("fused")
            if keep_config(c, head_dim=head_dim, elt_bytes=elt_bytes, loop_level=level, tma=tma, smem_limit=smem_limit)]
    raise ValueError(f"{pin.source}: this tile is not measured spill-free on sm_90 for head_dim {head_dim}, "
                     f"{elt_bytes}-byte inputs and loop level {level!r} (K and V loaded through "
                     f"{'TMA' if tma else 'pointers'}) under Triton {triton.__version__}; "
                     f"kept for this launch: {' | '.join(kept) or 'none'}")


def split_pin(*, head_dim: int, block_m: int, elt_bytes: int,
              smem_limit: int = SMEM_LIMIT_BYTES) -> Optional[triton.Config]:
    """The split kernel's pinned config for this launch, or None; ``ValueError`` when the launch
    does not keep it (``split_kept_configs``)."""
    pin = pinned("split")
    if pin is None:
        return None
    kept = split_kept_configs(SPLIT_CONFIGS, block_d=head_block(head_dim), block_m=block_m, elt_bytes=elt_bytes,
                              smem_limit=smem_limit)
    if any(c is pin.config for c in kept):
        return pin.config
    check_smem(pin, block_m, pin.config.kwargs["BLOCK_N"], pin.config.num_stages, head_dim, elt_bytes, smem_limit)
    raise ValueError(f"{pin.source}: this key tile is not kept at head_dim {head_dim} with {elt_bytes}-byte inputs "
                     "(spill-free sm_90 compiles: 16-bit inputs take 32 to 128 keys and 3 or 4 stages, fp32 inputs "
                     f"BLOCK_N x BLOCK_D <= 2048 or 16 keys); kept for this launch: "
                     f"{' | '.join(map(config_text, kept)) or 'none'}")


def check_smem(pin: Pin, block_m: int, block_n: int, num_stages: int, head_dim: int, elt_bytes: int,
               limit: int = SMEM_LIMIT_BYTES) -> None:
    need = smem_bytes(block_m, block_n, num_stages, head_block(head_dim), elt_bytes)
    if need > limit:
        raise ValueError(f"{pin.source}: this tile needs {need // 1024} KB of shared memory at head_dim {head_dim} "
                         f"with {elt_bytes}-byte inputs, over this GPU's {limit // 1024} KB per block")
