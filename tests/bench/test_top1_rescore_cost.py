"""bench/top1_rescore_cost.py: sampled top-1 keys and the re-scored tiles they cost."""

import torch
from bench import top1_rescore_cost as cost


def test_sampled_top_keys_are_causal_and_the_sink_wins_most_rows():
    n = 4096
    for model in ("iid", "sink"):
        top = cost.top_keys(n, model, torch.Generator().manual_seed(0))
        assert top.shape == (n,) and (top >= 0).all() and (top <= torch.arange(n)).all()
    sink = cost.top_keys(n, "sink", torch.Generator().manual_seed(0))
    iid = cost.top_keys(n, "iid", torch.Generator().manual_seed(0))
    assert (sink == 0).float().mean() > 0.95 and (iid == 0).float().mean() < 0.05


def test_rescored_and_loop_tiles_count_blocks():
    top = torch.tensor([0, 0, 1, 5, 9, 9, 2, 3])  # blocks of 4 queries, tiles of 4 keys
    assert cost.rescored_tiles(top, 4, 4).tolist() == [2, 2]  # tiles {0, 1} and {2, 0}
    assert cost.loop_tiles(10, 4, 4).tolist() == [1, 2, 3]  # queries end at 4, 8, 10


def test_cost_rows_weigh_tiles_with_the_report():
    report = {"rows": [dict(head_dim=64, stats="long", BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2,
                            hot_loop_per_1k_scores=1000.0, top1_rescore_per_tile=4096)]}
    rows = cost.cost_rows(report, lengths=(64,))
    assert {r["model"] for r in rows} == {"sink", "iid"}
    # one block, one key tile: the re-score costs one loop tile (4096 = 1000 * 64 * 64 / 1000)
    assert all(r["tiles_per_block"] == 1 and r["share_of_loop"] == 1.0 for r in rows)
    assert "| 64 | long | 64x64 w4 s2 | 64 |" in cost.markdown(rows)
