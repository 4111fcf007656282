"""What registry entries that own their options share (docs/architecture.md, "Registries and
entries that own their options"). Attacks (:class:`~dmattack.attacks.schedule.AttackEntry`),
samplers (:class:`~dmattack.diffusion.samplers.Sampler`) and metrics (:class:`evaluators.Metric`)
declare their options as the fields of a config dataclass (checked by
:func:`check_entry_config`); the command line makes one option per field
(:func:`entry_option_table`, :func:`entry_click_option`), shared by the entries that declare
it alike, with a help that names its readers, unset by default."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from .settings import (
    FieldType,
    check_value_for_any,
    click_type,
    field_types,
    option_name,
    setting_of,
)
from .text import format_number


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


@dataclass
class EntryOption:
    """One command-line option standing for config field ``field`` of the registered entries
    in ``readers`` ((entry name, dataclass field) pairs, in registration order); ``param`` is
    its click parameter name, ``spelling`` its option (``--eta``)."""

    field: str
    param: str
    spelling: str
    type: FieldType
    readers: list[tuple[str, dataclasses.Field]]

    @property
    def entries(self) -> list[str]:
        return [name for name, _ in self.readers]


def entry_option_table(configs: Iterable[tuple[str, type]], *, taken: Collection[str] = (),
                       skip: Collection[str] = (),
                       param: Callable[[str, str], str] = lambda key, spelling:
                       key.replace(".", "__")) -> list[EntryOption]:
    """One option per field of the entries' ``configs`` ((entry name, config class) pairs in
    registration order; fields in ``skip`` and settings with ``cli=False`` left out). Entries
    declaring a field of the same name, type and spelling share its option; a field declared
    otherwise by an earlier entry, or named or spelled like one of the command's other options
    (``taken``, dashes as underscores), is spelled ``--<entry>-<field>`` and keyed
    ``<entry>.<field>``. ``param(key, spelling)``: the click parameter name (default: the key,
    dots as ``__``; dashes become underscores)."""
    table: dict[str, EntryOption] = {}
    for name, config in configs:
        types_ = field_types(config)
        for f in dataclasses.fields(config):
            s = setting_of(f)
            if f.name in skip or s is None or not s.cli:
                continue
            ft, spelling = types_[f.name], option_name(f)
            shared = table.get(f.name)
            if shared is not None and shared.type == ft and shared.spelling == spelling:
                shared.readers.append((name, f))
                continue
            clash = {f.name, spelling[2:].replace("-", "_")} & set(taken)
            key = f.name if shared is None and not clash else f"{name}.{f.name}"
            if key != f.name:
                spelling = f"--{name}-{f.name.replace('_', '-')}"
            table[key] = EntryOption(f.name, param(key, spelling).replace("-", "_"),
                                     spelling, ft, [(name, f)])
    return list(table.values())


def _sentence(text: str) -> str:
    """``text`` to follow ``"pgd: "``: its first word in lower case unless an acronym."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _default_text(opt: EntryOption, value: Any) -> str:
    """A default as click shows it (a flag by its spelling, ``checkpoint`` / ``no-checkpoint``)."""
    if isinstance(value, bool):
        return opt.spelling[2:] if value else f"no-{opt.spelling[2:]}"
    if value is None:
        return "none"
    return format_number(value) if isinstance(value, (int, float)) else str(value)


def entry_option_help(opt: EntryOption) -> str:
    """``"pgd, trajectory: <help> [choices]; lookahead: <help>"`` and the default(s) (a help
    text saying ``[default: …]`` itself keeps its own)."""
    groups: dict[str, list[str]] = {}
    for name, f in opt.readers:
        s = setting_of(f)
        choices = s.allowed_choices()
        text, _, default = _sentence(s.help).rstrip(".").partition(" [default:")
        text += (f" [{' | '.join(choices)}]" if choices else "") + (
            f" [default:{default}" if default else "")
        groups.setdefault(text, []).append(name)
    help_text = "; ".join(f"{', '.join(names)}: {text}" for text, names in groups.items())
    if "[default:" in help_text:
        return help_text
    defaults = {name: _default_text(opt, field_default(f)) for name, f in opt.readers}
    if len(set(defaults.values())) == 1:
        return f"{help_text} [default: {next(iter(defaults.values()))}]"
    return f"{help_text} [default: {', '.join(f'{n} {d}' for n, d in defaults.items())}]"


def field_default(f: dataclasses.Field) -> Any:
    """The default of config field ``f`` (its factory called)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def option_defaults(config: Any) -> dict[str, Any]:
    """``{field: default}`` of an entry's config (class or instance)."""
    return {f.name: field_default(f) for f in dataclasses.fields(config)}


def option_label(value: Any) -> str:
    """An option's value in a label (``decay0.5``, ``eta0.1234567``): numbers exact
    (:func:`~dmattack.core.text.format_number`), so settings that differ get labels (and
    default folders) that differ."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_number(value)
    return str(value)


def entry_spelling(configs: Iterable[type], option: str) -> str:
    """The command-line spelling of option ``option`` as the first of ``configs`` declaring
    it spells it; ``--option`` when none does."""
    for config in configs:
        for f in dataclasses.fields(config):
            if f.name == option:
                return option_name(f)
    return "--" + option.replace("_", "-")


def own_option(config: Any, name: str, holder: str) -> Any:
    """Attribute ``name`` of a settings object reads the field of its entry's ``config``
    (``spec.pgd_steps``, ``sampler.eta``); AttributeError naming ``holder`` otherwise."""
    if config is not None and not name.startswith("_") and name in {
            f.name for f in dataclasses.fields(config)}:
        return getattr(config, name)
    raise AttributeError(f"{holder} has no option {name!r}")


def entry_click_option(opt: EntryOption) -> Any:
    """The click option: unset by default (each entry then reads its own default); a
    setting's ``aliases`` are accepted spellings too."""
    import click

    if opt.type.kinds == (bool,):
        decls = [f"{opt.spelling}/--no-{opt.spelling[2:]}", opt.param]
        return click.Option(decls, default=None, help=entry_option_help(opt))
    aliases = dict.fromkeys(a for _, f in opt.readers for a in setting_of(f).aliases)
    return click.Option([opt.spelling, *aliases, opt.param], type=click_type(opt.type),
                        default=None, help=entry_option_help(opt))


def check_given_value(opt: EntryOption, configs: dict[str, type], value: Any) -> None:
    """A given ``value`` of ``opt`` allowed by one of its readers' fields (type, range,
    choices; ``configs``: entry name → config class), checked before the expensive part of a
    command; which entry reads it is checked once the entry is known."""
    check_value_for_any([(configs[n], f.name) for n, f in opt.readers],
                        tuple(value) if isinstance(value, list) else value)
