"""AttentionStats.mark_nan_rows: NaN rows marked in every statistic, every other value kept exactly."""

import math

import torch
from circuit_stats.kernels import AttentionStats


def stats_with_edge_values(B=2, H=3, N=7, keys=9) -> AttentionStats:
    """Random statistics with -0.0, +-inf and a NaN outside the rows to mark."""
    st = AttentionStats(lse=torch.randn(B, H, N), sink=torch.randn(B, H, N), offsets=torch.randn(B, H, N, 2),
                        entropy=torch.randn(B, H, N), top1_index=torch.randint(0, 5, (B, H, N)),
                        top1_prob=torch.rand(B, H, N), key_mass=torch.rand(B, H, keys))
    st.sink[0, 0, 0], st.sink[0, 0, 1], st.entropy[0, 0, 2], st.lse[0, 0, 3] = -0.0, math.inf, -math.inf, math.nan
    return st


def test_nan_rows_are_marked_and_every_other_value_is_kept_exactly(seed):
    st = stats_with_edge_values()
    before = {name: t.clone() for name, t in st.as_dict().items()}
    row_nan = torch.rand(st.sink.shape) < 0.3
    row_nan[0, 0, :4] = False  # the edge values' rows are kept
    row_nan[1, 2, 0] = True  # at least one marked row
    weight = (torch.rand(2, st.sink.shape[2]) < 0.5).float()
    st.mark_nan_rows(row_nan, weight)
    for name, t in st.as_dict().items():
        old = before[name]
        if name == "key_mass":
            marked = (row_nan & (weight[:, None, :] != 0)).any(-1, keepdim=True).expand_as(t)
        else:
            marked = row_nan if t.dim() == 3 else row_nan[..., None].expand_as(t)
        fill = -1 if name == "top1_index" else math.nan
        want = old.masked_fill(marked, fill)
        assert t.dtype == old.dtype, name
        if name == "top1_index":
            assert torch.equal(t, want), name
            continue
        assert torch.equal(t.isnan(), want.isnan()), name
        kept = ~want.isnan()
        assert torch.equal(t[kept], want[kept]) and torch.equal(t[kept].signbit(), want[kept].signbit()), name
    assert st.sink[0, 0, 0].signbit() and st.sink[0, 0, 1] == math.inf and st.entropy[0, 0, 2] == -math.inf
