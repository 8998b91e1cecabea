"""Instruction mix of one iteration of a compiled kernel's matrix-unit loops, from its SASS.

A loop is a label followed later by a backward branch to it; the loops that hold tensor-core
instructions (HGMMA on Hopper, HMMA on Ampere) are the key/value loops of an attention kernel,
in program order (ours: the window-edge loop when there is a window, the unmasked loop, then the
causal-diagonal loop). Used by the compile test (``kernels.aot``) and ``bench.compile_report``.
"""

from __future__ import annotations

import collections
import re

CLASSES = {
    "mma": lambda op: op.startswith(("HGMMA", "HMMA")),
    "mufu_ex2": lambda op: op == "MUFU.EX2",
    "mufu_other": lambda op: op.startswith("MUFU"),
    "fp_alu": lambda op: op.split(".")[0] in {"FADD", "FMUL", "FFMA", "FMNMX", "FSETP", "FSEL", "FCHK", "FMNMX3",
                                              "FADD2", "FMUL2", "FFMA2", "FSET"},
    "convert": lambda op: op.split(".")[0] in {"F2FP", "F2F", "I2F", "F2I", "PRMT"},
    "int_alu": lambda op: op.split(".")[0] in {"IADD3", "IMAD", "LEA", "SHF", "LOP3", "ISETP", "SEL", "IABS",
                                               "VIADD", "IMNMX", "VIMNMX", "ISCADD", "IADD", "PLOP3", "P2R", "R2P",
                                               "ICMP", "MOV", "UIADD3", "UMOV", "ULEA", "UIMAD", "USHF", "ULOP3",
                                               "UISETP", "USEL", "R2UR", "S2UR", "UPRMT", "VIADDMNMX", "CS2R",
                                               "IADD3X", "IMAD.WIDE", "UIADD3.X", "ISETP.NE", "FMNMX"},
    "shuffle": lambda op: op.startswith("SHFL"),
    "global_load": lambda op: op.split(".")[0] in {"LDG", "LDGSTS"} or op.startswith(("UTMA", "UBLKCP")),
    "shared_mem": lambda op: op.split(".")[0] in {"LDS", "STS", "LDSM", "STSM"},
    "local_spill": lambda op: op.split(".")[0] in {"STL", "LDL"},
    "sync": lambda op: op.split(".")[0] in {"BAR", "SYNCS", "WARPGROUP", "WARPSYNC", "DEPBAR", "LDGDEPBAR",
                                            "MEMBAR", "FENCE"},
}


def parse(sass: str) -> tuple[list[tuple[str, str]], list[tuple[int, int]]]:
    """``(instructions as (opcode, text), loops as (first, last) instruction indices)``."""
    instrs: list[tuple[str, str]] = []
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        s = line.strip()
        m = re.match(r"^(\.?\w+):$", s)
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        parts = s.split("\t", 1)
        if len(parts) != 2:
            continue
        body = re.sub(r"^@!?U?P\w+\s+", "", parts[1].strip().rstrip(";").strip())
        if body:
            instrs.append((body.split()[0], body))
    loops = []
    for i, (op, body) in enumerate(instrs):
        if op.startswith("BRA"):
            tgt = body.split()[-1].lstrip("`(").rstrip(")")
            if tgt in labels and labels[tgt] <= i:
                loops.append((labels[tgt], i))
    return instrs, loops


def instruction_mix(instrs: list[tuple[str, str]], lo: int, hi: int) -> dict[str, int]:
    """Counts per class (first matching class) and ``total`` for instructions ``lo..hi``."""
    c: collections.Counter = collections.Counter()
    for op, _ in instrs[lo:hi + 1]:
        c["total"] += 1
        c[next((k for k, f in CLASSES.items() if f(op)), "other")] += 1
    return dict(c)


def mma_loops(sass: str) -> list[dict]:
    """Instruction mix of one iteration of each innermost loop holding MMA instructions."""
    instrs, loops = parse(sass)
    # Out-of-line stubs after the first EXIT (barrier retries) branch back into the body.
    exit_idx = next((i for i, (op, _) in enumerate(instrs) if op == "EXIT"), len(instrs))
    mma = [(lo, hi) for lo, hi in loops if hi < exit_idx and instruction_mix(instrs, lo, hi).get("mma", 0)]
    inner = [(lo, hi) for lo, hi in mma
             if not any((l2, h2) != (lo, hi) and lo <= l2 and h2 <= hi for l2, h2 in mma)]
    return [dict(start=lo, end=hi, **instruction_mix(instrs, lo, hi)) for lo, hi in sorted(inner)]
