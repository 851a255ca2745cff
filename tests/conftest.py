"""Fixtures shared by the tests; the tiny model itself is in ``tiny.py``."""

import pytest
import torch
from tiny import make_tiny_lm

from models import TransformersLM


@pytest.fixture
def tiny_lm() -> TransformersLM:
    return make_tiny_lm()


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, which stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
