"""`dmattack demo`: everything the toolkit is for, on data with a known distribution, in
minutes on a CPU (sections: corrupted digits-subspace, 3-D scatter plots, attack curves,
fewer sampling steps, adaptive attacks, purification; on request the reviewers' controls: a
corruption sweep and a compute-matched DDPM), over one or several seeds. Writes
``report.md``, PNG figures and ``results.json``.

The package is light to import (no torch): its section table (:mod:`.sections`) is read by
the command line's option declarations; :func:`run_demo`, :func:`check_run` and the report's
headline are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

from .sections import (
    DEFAULT_SECTIONS,
    NEEDS_SUBSPACE,
    QUICK_SECTIONS,
    SECTIONS,
    SHIPPED_UNETS,
    resolve_sections,
)

_LAZY = {"run_demo": "run", "check_run": "run", "RESULTS": "run", "MAX_SEED": "run",
         "headline_rows": "report", "headline_title": "report"}
__all__ = ["DEFAULT_SECTIONS", "NEEDS_SUBSPACE", "QUICK_SECTIONS", "SECTIONS", "SHIPPED_UNETS",
           "resolve_sections", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
