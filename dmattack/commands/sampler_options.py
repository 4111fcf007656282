"""The sampler options of ``dmattack sample``, ``attack``, ``curve`` and ``evaluate``: the
settings every sampler shares (:class:`~dmattack.diffusion.sampling.SamplerConfig`:
``--sampler``, ``--sampler-steps``, ``--clip-denoised``) and every registered sampler's own
options (its :attr:`~dmattack.diffusion.samplers.Sampler.config`), so a plugin's sampler
brings its own; and the own options of the purifier's samplers for ``dmattack purify``
(:func:`purify_click_options`, ``--purify-sampler`` picks the chain).

An own option is spelled as its field declares (DDIM's ``--eta``); samplers declaring a field
of the same name and type share it, and its ``--help`` says which samplers read it
(``ddim: DDIM η …``). A field named like another option of these commands
(:data:`SAMPLING_COMMAND_OPTIONS`, or an attack's option) is spelled ``--<sampler>-<field>``.
The own options default to unset (the sampler's default), and one given that the chosen
sampler does not read is refused (one line, exit code 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.entry_options import (
    EntryOption,
    check_given_value,
    entry_click_option,
    entry_option_table,
)
from ..core.errors import ConfigError
from ..core.registry import SAMPLERS
from ..core.settings import (
    check_field,
    click_options,
    option_name,
    option_values,
    param_name,
    setting_of,
    shown,
)

SAMPLER_PREFIX = "sampler."
SAMPLING_COMMAND_OPTIONS = frozenset((
    "run", "runs", "pipeline", "pipelines", "ema", "device", "sampler", "sampler_steps", "steps",
    "clip_denoised", "num_samples", "batch_size", "seed", "first_sample", "out", "metrics",
    "metric", "inception_weights", "data_dir", "dataset", "allow_small_fid", "threads",
    "method", "steps_attacked", "percent", "window", "windows", "eps_scale", "step_counting",
    "samples", "sample_files", "samples_key", "feature_extractor", "memorization_space",
    "dinov2_dir", "help"))
"""Names of the options of ``sample``, ``attack``, ``curve`` and ``evaluate`` other than the
samplers' own (spellings without ``--``, dashes as underscores); a sampler option named like
one is spelled ``--<sampler>-<field>``. tests/test_sampler_options.py keeps it complete."""


def _taken() -> set[str]:
    """Names an own option may not be spelled by: the commands' other options and every
    registered attack's option (``attack`` and ``curve`` offer those too)."""
    from ..attacks.options import option_table as attack_table

    taken = set(SAMPLING_COMMAND_OPTIONS)
    for opt in attack_table():
        taken |= {opt.field, opt.spelling[2:].replace("-", "_")}
    return taken


def sampler_option_table(taken: set[str] | None = None, samplers: dict[str, str] | None = None
                         ) -> list[EntryOption]:
    """The own options of every registered sampler (plugins included), in registration
    order: shared by name and type, else spelled ``--<sampler>-<field>``. ``samplers``: the
    samplers offered, ``{name the command uses: registered name}`` (default: every registered
    one by its name); ``taken``: the names an own option may not be spelled by (default: the
    sampling commands', :func:`_taken`)."""
    taken = _taken() if taken is None else taken
    samplers = {n: n for n in SAMPLERS.names()} if samplers is None else samplers
    return entry_option_table(((n, SAMPLERS[r].config) for n, r in samplers.items()),
                              taken=taken, param=lambda key, _: param_name(SAMPLER_PREFIX + key))


def sampler_options(exclude: tuple[str, ...] = (), prefix: str = SAMPLER_PREFIX) -> list[Any]:
    """The click options of a sampling command: :class:`SamplerConfig`'s shared settings
    (parameters ``sampler__name`` …, less ``exclude``) and every registered sampler's own
    (:func:`sampler_option_table`; ``sampler__eta`` …)."""
    from ..diffusion.sampling import SamplerConfig

    if prefix != SAMPLER_PREFIX:
        raise ValueError(f"sampler options take the prefix {SAMPLER_PREFIX!r}")
    holder = click_options(SamplerConfig, exclude=exclude, prefix=prefix)(lambda: None)
    return [*reversed(holder.__click_params__), *map(entry_click_option, sampler_option_table())]


def check_sampler_option_values(opts: dict[str, Any]) -> None:
    """Each own option given (not None) allowed by a sampler reading it (type, range,
    choices), before any model is loaded; whether the chosen sampler reads it is checked once
    the sampler is known (:func:`given_sampler_options`)."""
    for opt in sampler_option_table():
        value = opts.get(opt.param)
        if value is not None:
            check_given_value(opt, {n: SAMPLERS[n].config for n in opt.entries}, value)


def given_sampler_options(opts: dict[str, Any], sampler: str,
                          table: list[EntryOption] | None = None,
                          unread: Callable[..., ConfigError] | None = None) -> dict[str, Any]:
    """The own options given on the command line (not None), all read by ``sampler``;
    ConfigError naming the first one it does not read (``unread(field, value, sampler,
    spelling)`` when given). ``table``: default :func:`sampler_option_table`."""
    out: dict[str, Any] = {}
    table = sampler_option_table() if table is None else table
    for opt in table:
        value = opts.get(opt.param)
        if value is None:
            continue
        if sampler not in opt.entries and unread is not None:
            raise unread(opt.field, value, sampler, opt.spelling)
        if sampler not in opt.entries:
            reads = [o.spelling for o in sampler_option_table() if sampler in o.entries]
            raise ConfigError(f"{opt.field} ({opt.spelling}) = {shown(value)} is not used by "
                              f"sampler {sampler!r} (it reads "
                              f"{', '.join(reads) or 'no options of its own'}); "
                              f"{opt.spelling} is read by: {', '.join(opt.entries)}",
                              field=opt.field)
        out[opt.field] = tuple(value) if isinstance(value, list) else value
    return out


def sampler_from_options(opts: dict[str, Any], loaded: Any) -> Any:
    """The :class:`~dmattack.diffusion.sampling.SamplerConfig` of a command's options for
    model ``loaded``: unset settings from the model's protocol
    (:func:`~dmattack.evaluation.metrics.resolve_sampler`), each own option checked to be
    read by the chosen sampler, ``--sampler-steps`` only for a strided one."""
    from ..diffusion.sampling import SamplerConfig
    from ..evaluation.attack_eval import default_protocol
    from ..evaluation.metrics import resolve_sampler

    opts = option_values(opts)
    name = opts["sampler__name"]
    name = default_protocol(loaded).sampler.name if name is None else name
    check_field(SamplerConfig, "name", name)  # an unknown name first
    own = given_sampler_options(opts, name)
    steps = opts["sampler__steps"]
    if steps is not None and not SAMPLERS[name].strided:  # it runs all T steps
        strided = ", ".join(n for n in SAMPLERS.names() if SAMPLERS[n].strided)
        raise ConfigError(f"--sampler-steps {steps} is not read by sampler {name} (it runs "
                          f"all {loaded.diffusion.num_timesteps} steps); allowed: "
                          f"--sampler-steps only with --sampler {strided}")
    return resolve_sampler(loaded, name, steps, opts["sampler__clip_denoised"], **own)


# ----------------------------------------------------------------------------- dmattack purify
PURIFY_COMMAND_OPTIONS = frozenset(("run", "runs", "pipeline", "pipelines", "device", "out",
                                    "threads", "help"))
"""Names of ``dmattack purify``'s options besides its :class:`~dmattack.purification.evaluate.
PurifyConfig` settings and the purify samplers' own options (tests/test_purify_sampler_options.py
keeps it complete)."""


def purify_option_table() -> list[EntryOption]:
    """The own options of the purifier's samplers (:func:`~dmattack.purification.purifier.
    purify_samplers`, by their purifier names: ``ancestral``, ``ddim``, a plugin's), spelled
    ``--<purify sampler>-<field>`` where a field is named like another option of
    ``dmattack purify``."""
    from ..core.settings import iter_settings
    from ..purification.evaluate import PurifyConfig
    from ..purification.purifier import purify_sampler_name, purify_samplers

    taken = set(PURIFY_COMMAND_OPTIONS)
    for _, f, _ in iter_settings(PurifyConfig):
        spellings = (option_name(f), *setting_of(f).deprecated, *setting_of(f).aliases)
        taken |= {f.name, *(s[2:].replace("-", "_") for s in spellings)}
    return sampler_option_table(taken, {p: purify_sampler_name(p) for p in purify_samplers()})


def purify_click_options(exclude: tuple[str, ...] = (), prefix: str = SAMPLER_PREFIX
                         ) -> list[Any]:
    """The click options of ``dmattack purify``'s purify-sampler options
    (:func:`purify_option_table`; parameters ``sampler__eta`` …), unset by default; ``--help``
    says which purify samplers read each."""
    if prefix != SAMPLER_PREFIX or exclude:
        raise ValueError(f"purify sampler options take the prefix {SAMPLER_PREFIX!r} and "
                         "exclude nothing")
    return [entry_click_option(opt) for opt in purify_option_table()]


def given_purify_options(opts: dict[str, Any], sampler: str) -> dict[str, Any]:
    """The purify sampler's own options given to ``dmattack purify`` (``{field: value}``);
    one given that purify chain ``sampler`` does not read is refused in one line
    (:func:`~dmattack.purification.purifier.unread_option`)."""
    from ..purification.purifier import unread_option

    return given_sampler_options(option_values(opts), sampler, purify_option_table(),
                                 unread_option)
