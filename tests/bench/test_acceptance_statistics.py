"""Issue 23's GPU timing harness: ratios over the right baselines, and its plumbing on the CPU
(timings there mean nothing)."""

import json

import pytest

from bench import acceptance_statistics as stats


def row(variant, ms, tokens="uniform", D=128, N=4096, status="ok"):
    return {"variant": variant, "tokens": tokens, "D": D, "N": N, "median_ms": ms, "status": status}


def test_ratios_divide_by_plain_and_full_also_by_capped_at_the_same_size():
    rows = [row("ours-plain", 2.0), row("ours-capped", 2.5), row("ours-long", 2.4), row("ours-all", 2.6, "code"),
            row("ours-full", 4.0, "code"), row("ours-plain", 8.0, N=16384), row("ours-all", 9.0, "code", N=16384),
            row("ours-all-loop", 12.0, "prose", N=16384), row("ours-long", 1.0, N=16384, status="error: boom")]
    got = {(r["variant"], r["tokens"], r["N"], r["baseline"]): (r["ratio"], r["target"]) for r in stats.ratios(rows)}
    assert got == {("ours-capped", "uniform", 4096, "ours-plain"): (1.25, None),
                   ("ours-long", "uniform", 4096, "ours-plain"): (pytest.approx(1.2), 1.3),
                   ("ours-all", "code", 4096, "ours-plain"): (1.3, 1.3),
                   ("ours-full", "code", 4096, "ours-plain"): (2.0, 1.8),
                   ("ours-full", "code", 4096, "ours-capped"): (1.6, 1.8),
                   ("ours-all", "code", 16384, "ours-plain"): (1.125, 1.3),
                   ("ours-all-loop", "prose", 16384, "ours-plain"): (1.5, None)}


def test_quick_run_writes_every_row_and_the_ratio_table(tmp_path):
    assert stats.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("statistics-quick-*.json")
    doc = json.loads(path.read_text())
    timed = {(r["variant"], r["tokens"]) for r in doc["results"] if r["status"] == "ok"}
    assert timed == {(v, t) for t, variants in stats.SWEEPS for v in variants}
    # every row but ours-plain's over ours-plain, and ours-full's over ours-capped too
    assert len(doc["ratios"]) == len(timed)
    md = path.with_suffix(".md").read_text()
    assert "| ours-full | code | 16 | 48 | ours-capped |" in md


def test_bad_settings_exit_2_and_write_nothing(tmp_path, capsys):
    assert stats.main(["--device", "cpu", "--out-dir", str(tmp_path)]) == 2
    assert stats.main(["--quick", "--lengths", "4k", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--head-dims and --lengths" in err
    assert not any(tmp_path.iterdir())
