"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Test tensors are small: one intra-op thread is as fast, and on a shared 2-core machine it
    avoids OpenMP threads spinning against each other.  The previous setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
