"""The sections of `dmattack demo` and which run by default. Imports no torch (nor the
training and plotting stack the rest of the demo needs), so the command line lists them
without that cost."""

from __future__ import annotations

from collections.abc import Sequence

from ..core.errors import ConfigError

SECTIONS = {"subspace": "corrupted_subspace", "toy": "toy_3d", "attacks": "attacks",
            "steps": "sampling_steps", "adaptive": "adaptive_attacks",
            "purification": "purification", "sweep": "corruption_sweep",
            "compute": "compute_matched"}
"""Section names (``--section``) → their key in results.json, in report order."""
DEFAULT_SECTIONS = ("subspace", "toy", "attacks", "steps", "adaptive", "purification")
QUICK_SECTIONS = ("subspace", "toy", "attacks", "steps", "adaptive")
"""``--quick`` leaves out purification (opt-in: ``--quick --section purification``) to stay
within its 2-minute budget."""
NEEDS_SUBSPACE = ("attacks", "steps", "adaptive")  # they reuse section 1's models
SHIPPED_UNETS = ("adaptive", "purification")  # always on checkpoints/digits-*
"""The shipped trained runs (``checkpoints/`` at the repository's top)."""


def resolve_sections(sections: Sequence[str] | None = None, quick: bool = False
                     ) -> tuple[str, ...]:
    """The sections to run, in report order: ``None`` or empty → :data:`DEFAULT_SECTIONS`
    (:data:`QUICK_SECTIONS` when ``quick``); ``all`` → every section; ``attacks``, ``steps``
    and ``adaptive`` bring in ``subspace`` (they reuse its models)."""
    names = set(sections or (QUICK_SECTIONS if quick else DEFAULT_SECTIONS))
    if "all" in names:
        names = set(SECTIONS)
    bad = sorted(names - set(SECTIONS))
    if bad:
        raise ConfigError(f"demo section {bad[0]!r} is not one of "
                          f"{', '.join([*SECTIONS, 'all'])}", "sections")
    if names & set(NEEDS_SUBSPACE):
        names.add("subspace")
    return tuple(n for n in SECTIONS if n in names)
