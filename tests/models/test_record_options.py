"""RecordOptions: validation, and the kernel request and arguments it maps onto."""

import inspect
import math

import pytest
import torch

from circuit_stats.kernels import SideInputs, attention_with_stats
from circuit_stats.models.record_options import LAYER_FIELDS, RecordOptions, kernel_arguments


def test_options_normalise_offsets_and_bins():
    opts = RecordOptions(offsets=[2, 1], position_bins=[0, 4, math.inf])
    assert opts.offsets == (2, 1)
    assert opts.position_bins == (0.0, 4.0, math.inf)
    assert RecordOptions(position_bins="log2").position_bins[:3] == (0.0, 1.0, 2.0)


@pytest.mark.parametrize("bad, error, match", [
    (dict(offsets=[-1]), ValueError, "offsets must be >= 0"),
    (dict(entropy=1), TypeError, "entropy must be a bool"),
    (dict(local_window=0), ValueError, "local_window must be an int >= 1"),
    (dict(local_window=True), ValueError, "local_window must be an int >= 1"),
    (dict(position_bins=[4, 2]), ValueError, "position_bins edges"),
])
def test_bad_options_are_refused(bad, error, match):
    with pytest.raises(error, match=match):
        RecordOptions(**bad)


def test_kernel_arguments_are_attention_with_stats_arguments():
    opts = RecordOptions(offsets=(1, 3), entropy=True, distance=True, local_window=4, top1=True)
    side = SideInputs.build(batch=1, k_len=5, device=torch.device("cpu"))
    kwargs = kernel_arguments(opts.stats_request(), side)
    assert set(kwargs) <= set(inspect.signature(attention_with_stats).parameters)
    assert not set(kwargs) & set(LAYER_FIELDS)
    assert kwargs["side_inputs"] is side
    assert (kwargs["offsets"], kwargs["entropy"], kwargs["distance"], kwargs["local_window"], kwargs["top1"]) == (
        (1, 3), True, True, 4, True)
