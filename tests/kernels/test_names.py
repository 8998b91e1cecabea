"""The statistic vocabulary (kernels/names.py) is the one list the rest follows."""

from dataclasses import fields

from circuit_stats.kernels import names
from circuit_stats.kernels.stats import AttentionStats
from circuit_stats.models import recording


def test_vocabulary_names_every_attention_statistic_in_order():
    assert tuple(f.name for f in fields(AttentionStats)) == names.STATISTICS


def test_recording_averages_the_vocabulary_channels():
    assert recording.CHANNELS is names.CHANNELS and recording.SCALAR_STATISTICS is names.SCALAR_STATISTICS
    assert set(names.SCALAR_STATISTICS) < set(names.CHANNELS) < set(names.STATISTICS)
