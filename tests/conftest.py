"""Shared test setup."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The test models are tiny: intra-op threads buy nothing and, on a busy 2-core machine,
    cost a lot (spinning OpenMP workers). Subprocess tests keep the default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
