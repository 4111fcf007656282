"""What registry entries that own their options share (docs/architecture.md, "Registries and
entries that own their options"): the check of an entry's config dataclass. Attacks
(:class:`~dmattack.attacks.schedule.AttackEntry`), samplers
(:class:`~dmattack.diffusion.samplers.Sampler`) and metrics (:class:`evaluators.Metric`) declare
their options as the fields of such a config; the command line makes one option per field."""

from __future__ import annotations

import dataclasses

from .settings import field_types, setting_of


def check_entry_config(config: object, kind: str, shared: tuple[str, ...] = ()) -> None:
    """TypeError unless ``config`` is a dataclass whose every field is declared with
    :func:`~dmattack.core.settings.setting` (its help and allowed values), of a type the
    command line can take, and not named like one of the ``shared`` settings every entry of
    this ``kind`` has (``"Sampler"``, ``"AttackEntry"``, ``"Metric"``, for the message)."""
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise TypeError(f"{kind} config must be a dataclass, got {config!r}")
    field_types(config)  # TypeError for a field type the command line cannot take
    names = [f.name for f in dataclasses.fields(config)]
    bare = [f.name for f in dataclasses.fields(config) if setting_of(f) is None]
    if bare:
        raise TypeError(f"{config.__name__} fields {bare} are not declared with "
                        "dmattack.core.settings.setting() (their help and allowed values)")
    clash = [n for n in names if n in shared]
    if clash:
        raise TypeError(f"{config.__name__} fields {clash} are settings every {kind.lower()} "
                        f"shares ({', '.join(shared)}); rename them")
