"""Distillation tests run torch single-threaded.

Their tensors are tiny (2-D toys, a few hundred samples); on a 2-core machine shared with other
processes, torch's intra-op thread pool makes a (256, 2) @ (2, 2) matmul take tens of
milliseconds instead of microseconds. One thread is faster here and deterministic.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
