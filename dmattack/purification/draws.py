"""Several noisy forward passes of a randomised classifier in one batched call (docs/method.md
§13): the EOT draws of an attack iteration and the evaluation / selection draws of an image.

A call of a stochastic classifier ``model(x, generators)`` draws its noise for image i from
``generators[i]``. Draw e of a sequential loop over draws starts from the state image i's
generator has after e calls; :func:`fork_generators` hands out generators in exactly those
states (by replaying the noise one call draws, ``model.advance_generators``), so stacking the
draws into the batch dimension (row e·B + i) uses bit for bit the noise the loop would, and
leaves ``generators`` where the loop leaves them. Only the order of floating-point sums
changes (one batched forward/backward instead of ``draws`` of them). A model without
``advance_generators`` is called once per draw, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

MAX_STACK = 1 << 14
"""Most input values (draws × images × values per image) stacked into one call; more are split
into groups of whole draws. 2^14 stacks 4 draws of 64 digits (8×8: no faster with more on a
CPU, and 4 draws of a K = 5 graph without checkpointing hold ≈ 0.6 GB) and one draw of any
CIFAR-10 batch above 5 images, so memory never exceeds the loop's by more than that."""


def fork_generators(model, gens: Sequence[torch.Generator], draws: int
                    ) -> list[torch.Generator] | None:
    """``draws`` × B generators (draw-major) in the states of draws 0..draws−1 of a sequential
    loop; ``gens`` are advanced past all of them. None when ``model`` cannot replay its draws
    (no ``advance_generators``)."""
    advance = getattr(model, "advance_generators", None)
    if advance is None:
        return None
    out = []
    for _ in range(draws):
        for g in gens:
            fork = torch.Generator(g.device)
            fork.set_state(g.get_state())
            out.append(fork)
        advance(gens)
    return out


def _per_call(x: torch.Tensor) -> int:
    """How many draws of ``x`` (B, …) one call stacks (at least one)."""
    return max(1, MAX_STACK // max(x.numel(), 1))


def _groups(draws: int, per: int) -> Iterator[int]:
    done = 0
    while done < draws:
        yield min(per, draws - done)
        done += min(per, draws - done)


def eot_logits(model, x: torch.Tensor, gens: Sequence[torch.Generator], draws: int
               ) -> Iterator[torch.Tensor]:
    """Logits of ``draws`` successive noisy calls ``model(x, gens)`` as (d, B, classes) groups
    (all draws: d summing to ``draws``), with the graph to ``x`` when gradients are on. Each
    draw uses the noise a sequential loop would (module docstring); ``gens`` end advanced."""
    for d in _groups(draws, _per_call(x)):
        forks = fork_generators(model, gens, d)
        if forks is None:
            for _ in range(d):
                yield model(x, gens)[None]
            continue
        stacked = x.expand(d, *x.shape).reshape(d * len(x), *x.shape[1:])
        yield model(stacked, forks).view(d, len(x), -1)


def seeded_logits(model, x: torch.Tensor, generators: Sequence[Sequence[torch.Generator]]
                  ) -> torch.Tensor:
    """(R, B, classes) logits of ``model(x, generators[j])`` for draws j = 0..R−1 (fresh
    per-draw generators, as evaluation and selection draws), stacked into few calls."""
    out = []
    per = _per_call(x)
    for j in range(0, len(generators), per):
        group = generators[j:j + per]
        stacked = x.expand(len(group), *x.shape).reshape(len(group) * len(x), *x.shape[1:])
        out.append(model(stacked, [g for gens in group for g in gens]).view(len(group), len(x),
                                                                             -1))
    return torch.cat(out)
