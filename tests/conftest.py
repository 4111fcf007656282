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


class PickleExploit:
    """Unpickling this with plain pickle creates ``marker``: a stand-in for code in a file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def exploit(tmp_path):
    """(payload, marker): pickle ``payload`` into a file; loading it safely leaves no marker."""
    marker = tmp_path / "pwned"
    return PickleExploit(marker), marker
