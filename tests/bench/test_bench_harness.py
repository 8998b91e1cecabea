"""The benchmark harness runs at tiny sizes on the CPU and writes well-formed results.
(Timings here mean nothing; the real runs need a GPU.)"""

import json
import os

from bench import bench_kernel, bench_model, plot_results


def test_kernel_harness_quick(tmp_path):
    assert bench_kernel.main(["--quick", "--lengths", "48", "--head-dims", "16", "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("kernel-quick-*.json")
    data = json.loads(path.read_text())
    for key in ("device", "torch", "triton", "transformers", "date"):
        assert data["environment"][key]
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"ours-plain", "ours-sink-offsets", "ours-all", "ours-all-side", "sdpa-flash", "eager"}
    assert rows["ours-all-side"]["sink_err"] == 0  # the same call, its side inputs built once
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and r["tflops"] > 0 for r in rows.values())
    assert rows["eager"]["sink_err"] < 1e-5 and rows["ours-sink-offsets"]["sink_err"] < 1e-6
    assert path.with_suffix(".md").read_text().count("|") > 20
    assert plot_results.plot(path).stat().st_size > 0


def test_the_extra_variants_run_on_request_and_pointer_loads_leave_the_switch_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(bench_kernel.TMA_SWITCH, raising=False)
    seen = []
    real = bench_kernel.attention_with_stats
    monkeypatch.setattr(bench_kernel, "attention_with_stats",
                        lambda *a, **kw: seen.append(os.environ.get(bench_kernel.TMA_SWITCH)) or real(*a, **kw))
    argv = ["--quick", "--lengths", "48", "--head-dims", "16", "--out-dir", str(tmp_path)]
    assert bench_kernel.main(argv + ["--variants", "ours-plain,ours-plain-pointers"]) == 0
    (path,) = tmp_path.glob("kernel-quick-*.json")
    rows = {r["variant"]: r for r in json.loads(path.read_text())["results"]}
    assert set(rows) == {"ours-plain", "ours-plain-pointers"} and all(r["status"] == "ok" for r in rows.values())
    assert set(seen) == {None, "0"} and bench_kernel.TMA_SWITCH not in os.environ
    assert bench_kernel.main(argv + ["--variants", "ours-softcap,ours-all-softcap"]) == 0
    rows = {r["variant"]: r for r in json.loads(max(tmp_path.glob("kernel-quick-*.json"), key=os.path.getmtime)
                                                .read_text())["results"]}
    assert set(rows) == {"ours-softcap", "ours-all-softcap"} and all(r["status"] == "ok" for r in rows.values())
    assert bench_kernel.main(argv + ["--variants", "ours-plain,ours-fast"]) == 2
    assert "--variants: unknown ['ours-fast']" in capsys.readouterr().err


def test_the_issue_23_variants_run_and_in_loop_matching_is_switched_for_its_call_only(tmp_path, monkeypatch):
    from circuit_stats.kernels import triton_token_match

    calls = []
    real = bench_kernel.attention_with_stats
    monkeypatch.setattr(bench_kernel, "attention_with_stats", lambda *a, **kw: calls.append(
        (triton_token_match.TOKEN_MATCH, sorted(kw))) or real(*a, **kw))
    argv = ["--quick", "--lengths", "48", "--head-dims", "16", "--out-dir", str(tmp_path), "--tokens", "code",
            "--variants", "ours-all,ours-all-loop,ours-long,ours-long-sink,ours-capped,ours-full"]
    assert bench_kernel.main(argv) == 0
    (path,) = tmp_path.glob("kernel-quick-*.json")
    rows = {r["variant"]: r for r in json.loads(path.read_text())["results"]}
    assert all(r["status"] == "ok" and r["tokens"] == "code" for r in rows.values())
    # the sink cross-check only where the probabilities are ours-all's (no window, softcap, sinks)
    assert rows["ours-all-loop"]["sink_err"] < 1e-6 and rows["ours-long"]["sink_err"] < 1e-6
    assert not {"sink_err"} & (set(rows["ours-capped"]) | set(rows["ours-full"]) | set(rows["ours-long-sink"]))
    modes = {mode for mode, kw in calls}
    assert modes == {"band", "loop"} and triton_token_match.TOKEN_MATCH == "band"
    assert {mode for mode, kw in calls if "token_ids" in kw and "distance" not in kw} == {"band", "loop"}
    full = {tuple(kw) for mode, kw in calls if "distance" in kw and "token_ids" in kw}
    assert full == {("backend", "distance", "entropy", "local_window", "offsets", "sinks", "softcap", "span", "token_ids",
                     "top1", "window")}


def test_sink_dominated_scores_put_the_bonus_on_key_0_alone():
    import torch

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 40, 16, generator=g), torch.randn(2, 3, 40, 16, generator=g)
    q2, k2 = bench_kernel.sink_dominated(q, k, bonus=6.0)
    scale = 16 ** -0.5
    rest = (q[..., 1:] @ k[..., 1:].transpose(-1, -2)) * scale  # the scores without feature 0
    bonus = (q2 @ k2.transpose(-1, -2)) * scale - rest
    torch.testing.assert_close(bonus[..., 0], torch.full_like(bonus[..., 0], 6.0))
    torch.testing.assert_close(bonus[..., 1:], (k[..., 1:, 0] * scale)[:, :, None, :].expand_as(bonus[..., 1:]))
    assert torch.equal(q2[..., 1:], q[..., 1:]) and torch.equal(k2[:, :, 1:], k[:, :, 1:])


def test_full_sweep_refuses_to_run_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert bench_kernel.main(["--device", "cpu"]) == 2
    assert bench_model.main(["--device", "cpu"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_model_harness_quick(tmp_path):
    assert bench_model.main(["--quick", "--lengths", "48", "--xu-sequences", "4", "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("model-quick-*.json")
    data = json.loads(path.read_text())
    assert {r["path"] for r in data["results"]} == set(bench_model.PATHS)
    assert all(r["status"] == "ok" for r in data["results"])
    xu = data["xu2026_end_to_end"]
    assert xu["fused_s"] > 0 and xu["eager_s"] > 0 and xu["max_abs_diff_induction_attn"] < 1e-5
