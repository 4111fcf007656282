"""Shared test setup."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner


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


def tiny_train_config(**overrides):
    """A training config that trains in seconds on a CPU: 20 steps of an mlp-small on 256
    oblique-plane vectors, checkpoints every 10 steps, no preview grids."""
    from dmattack.training.objectives import ObjectiveConfig
    from dmattack.training.train import TrainConfig

    base = dict(dataset="oblique-plane", preset="mlp-small", num_data=256, steps=20,
                batch_size=32, checkpoint_every=10, sample_every=10_000, num_preview=0,
                log_every=5, warmup=5, objective=ObjectiveConfig("robust-adv"))
    base.update(overrides)
    return TrainConfig(**base)


def invoke_cli(*args: str):
    """``dmattack <args>`` in this process (exceptions caught, as a user would see them)."""
    import cli

    return CliRunner().invoke(cli.main, list(args))


@pytest.fixture
def two_checkpoints(tmp_path) -> Path:
    """A run trained for 20 steps: ``checkpoint/`` (step 20) and ``checkpoint.prev/`` (10)."""
    from dmattack.training.train import train

    return train(tiny_train_config(steps=20), tmp_path / "run")


def checkpoint_tensors(run: Path, folder: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Model, EMA and Adam moments of a run's checkpoint, by name."""
    from safetensors.torch import load_file

    out = {}
    for name in ("model", "ema"):
        out.update({f"{name}.{k}": v for k, v in
                    load_file(run / folder / f"{name}.safetensors").items()})
    state = torch.load(run / folder / "state.pt", weights_only=True)
    for i, s in state["optimizer"]["state"].items():
        out.update({f"adam.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    """Two runs' checkpoints hold bit-for-bit equal model, EMA and Adam moments."""
    wa, wb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert wa.keys() == wb.keys() and len(wa) > 4
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
