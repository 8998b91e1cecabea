"""The prefetch benchmark harness runs (tiny sleeps) and writes well-formed results."""

import json

from bench import bench_prefetch


def test_prefetch_harness(tmp_path):
    assert bench_prefetch.main(["--load", "0.02", "--score", "0.01", "--revisions", "4", "--prefetch", "0", "2",
                                "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("prefetch-*.json")
    data = json.loads(path.read_text())
    assert data["environment"]["date"] and "simulated" in data["note"]
    rows = {r["prefetch"]: r for r in data["results"]}
    assert set(rows) == {0, 2}
    assert all(r["revisions"] == 4 and r["wall_s"] > 0 for r in rows.values())
    assert rows[0]["peak_fetched"] == 1 and 1 <= rows[2]["peak_fetched"] <= 3
