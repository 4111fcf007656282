"""sha256 of a file: the one file-hashing helper of the toolkit (run-folder checkpoints,
verified metric caches, feature-extractor weights).

A foundation module: it imports nothing of dmattack, so ``evaluators/`` (which may import only
dmattack's foundations) and the run folders share it.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

READ_BYTES = 1 << 20
"""Bytes read at a time (1 MiB): a file of any size hashes in constant memory."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 (64 characters) of the bytes of the file at ``path``, read afresh."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(READ_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def weights_sha256(path: str | os.PathLike) -> str:
    """:func:`sha256_file` of a weights file that is hashed again and again (a feature
    extractor's), memoised on (resolved path, size, mtime): a changed file is hashed anew."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
