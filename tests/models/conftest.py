"""Fixtures shared by the Hugging Face integration tests."""

import pytest
from circuit_stats.models import set_backend

BACKENDS = ["torch", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    set_backend(request.param)
    yield request.param
    set_backend("auto")
