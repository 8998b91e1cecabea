"""bench.host_overhead at its quick setting: well-formed CPU host results, and the kernels and the
HF backend restored afterwards. (Its timings mean nothing here.)"""

import json

from bench import host_overhead
from circuit_stats.kernels import triton_attention, triton_token_match
from circuit_stats.models import attention


def test_host_overhead_quick(tmp_path):
    fused, band = triton_attention._attn_stats_fwd, triton_token_match._token_match_band
    assert host_overhead.main(["--quick", "--out-dir", str(tmp_path), "--label", "test"]) == 0
    (path,) = tmp_path.glob("host-overhead-quick-*.json")
    data = json.loads(path.read_text())
    assert data["environment"]["host_only"] is True and data["environment"]["label"] == "test"
    assert data["environment"]["device"].startswith("cpu")
    rows = {r["case"]: r for r in data["results"]}
    assert rows["kernel ours-plain"]["launches_per_call"] == 1 and rows["kernel ours-all"]["launches_per_call"] == 2
    assert rows["model forward, record(all) (per layer)"]["launches_per_call"] == 2  # fused + band per layer
    assert all(r["median_us_per_call"] > 0 and r["aten_ops_per_call"] > 0 for r in rows.values())
    # the output alone runs fewer operators than the same call with its (unused) statistics
    assert rows["kernel ours-plain, output only (attention_output)"]["aten_ops_per_call"] < \
        rows["kernel ours-plain"]["aten_ops_per_call"]
    assert set(data["profiles"]) == set(rows)
    assert path.with_suffix(".md").read_text().count("|") > 20
    assert triton_attention._attn_stats_fwd is fused and triton_token_match._token_match_band is band
    assert attention._BACKEND == "auto"
