"""HF conformance on the GPU for a GPU acceptance run: tiny random models of several decoder
families on the device, ``attn_implementation="circuit_stats"`` against eager attention with the
same weights (the tests in tests/models build their models on the CPU, so they never reach the GPU).

    python -m bench.acceptance_models --json result.json [--families gemma2,gpt-oss] [--device cuda]

Per family and dtype: max |logit difference| on a left-padded batch, outside and inside
``record()`` (every statistic finite; in bf16 against eager in float32 on the same weights, beside
eager's own bf16 error), and greedy ``generate()`` identical to eager's (float32).
One family's error is recorded and the next one still runs; results are written after each family.
With ``--jobs N`` the families run in N processes at once: most of the time is Triton compiling
each family's kernels (a few seconds per autotune config), which parallel processes overlap.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import torch

# Most valuable first: softcap (window + softcap), learned sinks, GQA, MQA, then plain families.
FAMILIES = ("gemma2", "gpt-oss", "llama-gqa", "gemma", "pythia", "qwen3", "olmo2")
# float32: our logits against eager's. bf16: both against eager in float32 on the same (bf16)
# weights; ours may be at most BF16_SLACK x eager's own bf16 error (plus a floor).
LOGIT_TOL_FP32 = 1e-3
BF16_SLACK, BF16_FLOOR = 2.0, 1e-2
STATS = dict(offsets=(1, 2), token_match=True, entropy=True)


def left_padded_batch(device, B=3, N=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 24, (B, N), generator=g)
    ids[:, N // 2 : N // 2 + 6] = ids[:, 2:8]  # a repeated stretch: induction targets
    mask = torch.ones(B, N, dtype=torch.long)
    for b in range(B):
        mask[b, : (7 * b + 2) % (N // 2)] = 0
    return ids.to(device), mask.to(device)


def model_pair(family: str, dtype, device):
    from circuit_stats.models import tiny_model

    ours = tiny_model(family, attn_implementation="circuit_stats", seed=1, dtype=dtype, initializer_range=0.3)
    eager = tiny_model(family, attn_implementation="eager", seed=1, dtype=dtype, initializer_range=0.3)
    eager.load_state_dict(ours.state_dict())
    return ours.to(device), eager.to(device)


@torch.no_grad()
def check_family(family: str, dtype, device) -> dict:
    """Logit differences, statistics finiteness and (float32) generate equality for one family."""
    import circuit_stats

    ours, eager = model_pair(family, dtype, device)
    ids, mask = left_padded_batch(device)
    keep = mask.bool()
    eager_logits = eager(ids, attention_mask=mask).logits.float()
    want = eager.float()(ids, attention_mask=mask).logits if dtype != torch.float32 else eager_logits
    plain = ours(ids, attention_mask=mask).logits.float()
    with circuit_stats.record(ours, **STATS) as rec:
        recorded = ours(ids, attention_mask=mask).logits.float()
    stats = rec.tensors()

    def err(logits):
        return float((logits - want)[keep].abs().max())

    row = {"family": family, "dtype": str(dtype).replace("torch.", ""), "logit_err": err(plain),
           "record_logit_err": err(recorded), "eager_logit_err": err(eager_logits),
           "stats_finite": all(bool(torch.isfinite(t.float()).all()) for t in stats.values()), "n_stats": len(stats)}
    tol = LOGIT_TOL_FP32 if dtype == torch.float32 else max(BF16_SLACK * row["eager_logit_err"], BF16_FLOOR)
    ok = max(row["logit_err"], row["record_logit_err"]) <= tol and row["stats_finite"]
    if dtype == torch.float32:
        kw = dict(attention_mask=mask[:2, -12:], max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=1)
        row["generate_equal"] = bool(torch.equal(ours.generate(ids[:2, -12:], **kw), eager.generate(ids[:2, -12:], **kw)))
        ok = ok and row["generate_equal"]
    row["status"] = "ok" if ok else "failed"
    return row


def refused(family: str) -> Optional[str]:
    """Why ``family`` cannot run here (missing config class, no AttentionInterface), or None."""
    from circuit_stats.models.families import attention_interface_refusal, missing_config_class, tiny_model

    missing = missing_config_class(family)
    if missing:
        return f"transformers has no {missing}"
    return attention_interface_refusal(tiny_model(family, attn_implementation="eager"))


def refusal_row(family: str) -> Optional[dict]:
    """The row of a family that cannot run here (skipped, with the reason) or is unknown (failed),
    else None."""
    try:
        reason = refused(family)
    except Exception as err:  # noqa: BLE001 - recorded, the next family still runs
        return {"family": family, "status": "failed", "error": f"{type(err).__name__}: {str(err)[:300]}"}
    return {"family": family, "status": "skipped", "reason": reason[:200]} if reason else None


def check_families(families: Sequence[str], dtypes: list, device: str, json_path: Path) -> list[dict]:
    """Every family and dtype in this process; ``json_path`` rewritten after each row."""
    rows = []
    for family in families:
        refusal = refusal_row(family)
        if refusal:
            rows.append(refusal)
            print(json.dumps(refusal), flush=True)
            json_path.write_text(json.dumps({"families": rows}, indent=1))
        for dtype in [] if refusal else dtypes:
            try:
                rows.append(check_family(family, dtype, device))
            except Exception as err:  # noqa: BLE001 - recorded, the next family still runs
                rows.append({"family": family, "dtype": str(dtype), "status": "failed",
                             "error": f"{type(err).__name__}: {str(err)[:300]}", "trace": traceback.format_exc()[-1500:]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "trace"}), flush=True)
            json_path.write_text(json.dumps({"families": rows}, indent=1))
    return rows


def check_in_processes(families: Sequence[str], argv_rest: list[str], jobs: int, json_path: Path) -> list[dict]:
    """One process per family, ``jobs`` at a time; rows in family order, whatever finished."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i}.json" for i in range(len(families))]

        def one(i: int) -> None:
            cmd = [sys.executable, "-m", "bench.acceptance_models", "--json", str(paths[i]), "--families", families[i],
                   "--jobs", "1", *argv_rest]
            subprocess.run(cmd, check=False)

        try:
            with ThreadPoolExecutor(jobs) as pool:
                list(pool.map(one, range(len(families))))
        finally:
            rows = [r for p in paths if p.exists() for r in json.loads(p.read_text())["families"]]
            rows += [{"family": f, "status": "failed", "error": "no result (process died or was stopped)"}
                     for f, p in zip(families, paths) if not p.exists()]
            json_path.write_text(json.dumps({"families": rows}, indent=1))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--device", default="cuda")
    p.add_argument("--jobs", type=int, default=4, help="families checked in parallel processes")
    a = p.parse_args(argv)
    families = a.families.split(",")
    if a.jobs > 1 and len(families) > 1:
        rows = check_in_processes(families, ["--dtypes", a.dtypes, "--device", a.device], a.jobs, a.json)
    else:
        rows = check_families(families, [getattr(torch, d) for d in a.dtypes.split(",")], a.device, a.json)
    a.json.write_text(json.dumps({"families": rows}, indent=1))
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
