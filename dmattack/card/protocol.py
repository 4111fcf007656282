"""Card protocols: versioned TOML files that fix everything a card measures (docs/card.md).

A protocol file ``protocols/<name>-v<version>.toml`` states every setting explicitly (there are
no defaults to drift). :func:`load_protocol` parses and validates it (:mod:`.protocol_check`)
into a frozen :class:`~.protocol_types.CardProtocol`; its identity is
``{"name", "version", "hash"}``, the hash being the sha256 of the canonical JSON of the parsed
content. ``protocols/HASHES.json`` pins each ``<name>-v<N>`` to its hash, so a protocol edited
without a new version is refused on load (and by a test).

``python -m dmattack.card`` prints every protocol's hash and whether it is pinned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from .protocol_check import LABEL, Bad, check_protocol, need, parse
from .protocol_types import CardProtocol

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (a dependency there)
    import tomli as tomllib

__all__ = ["LABEL", "PROTOCOL_DIR", "REGISTRY", "CardProtocol", "canonical_json",
           "list_protocols", "load_protocol", "main", "protocol_identity", "registered_hashes"]

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols"
REGISTRY = "HASHES.json"


def canonical_json(content: Any) -> str:
    """Keys sorted, no spaces, UTF-8 text: the bytes the protocol hash covers."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _read(path: Path) -> CardProtocol:
    """Parse, validate and hash one protocol file; the file's stem must be its label."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        proto = parse(raw)
        check_protocol(proto)
        need(path.stem == proto.label, "name", proto.name,
              f"the file {path.name} must be named {proto.label}.toml")
    except Bad as e:
        raise ConfigError(f"protocol {path.name}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"protocol {path.name}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"protocol {path}: cannot be read ({e})") from None
    digest = hashlib.sha256(canonical_json(proto.content()).encode("utf-8")).hexdigest()
    return dataclasses.replace(proto, hash=digest)


def registered_hashes(directory: Path = PROTOCOL_DIR) -> dict[str, str]:
    """``{"<name>-v<N>": sha256}`` from ``directory/HASHES.json``."""
    path = directory / REGISTRY
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"protocol registry {path} cannot be read: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"protocol registry {path} is not an object of label -> sha256")
    return data


def list_protocols(directory: Path = PROTOCOL_DIR) -> list[str]:
    """Labels (``<name>-v<N>``) of the protocol files in ``directory``, sorted."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_protocol(name: str, directory: Path = PROTOCOL_DIR) -> CardProtocol:
    """The protocol ``name`` (a label such as ``digits-v1``), validated, hashed and checked
    against its pinned hash: a protocol edited without a new version is refused (one line)."""
    known = list_protocols(directory)
    if name not in known:
        raise ConfigError(f"unknown protocol {name!r}; allowed: {', '.join(known) or 'none'}",
                          field="protocol")
    proto = _read(directory / f"{name}.toml")
    pinned = registered_hashes(directory).get(name)
    if pinned != proto.hash:
        new = next_version(proto.name, known)
        raise ConfigError(
            f"protocol {name} has hash {proto.hash[:12]}… but {REGISTRY} pins "
            f"{(pinned or 'nothing')[:12]}…: a protocol is never edited in place; copy it to "
            f"{proto.name}-v{new}.toml with version = {new} and register that (docs/card.md)",
            field="protocol")
    return proto


def next_version(name: str, labels: list[str]) -> int:
    """The first version of protocol ``name`` after every one in ``labels``."""
    versions = [int(m.group(2)) for m in map(LABEL.fullmatch, labels)
                if m is not None and m.group(1) == name]
    return max(versions, default=0) + 1


def protocol_identity(p: CardProtocol) -> dict[str, Any]:
    """``{"name", "version", "hash"}``: what a card records and what comparisons match on."""
    return {"name": p.name, "version": p.version, "hash": p.hash}


def main(argv: list[str] | None = None) -> int:
    """Print each protocol file's label, hash and whether HASHES.json pins that hash."""
    directory = Path(argv[0]) if argv else PROTOCOL_DIR
    pins = registered_hashes(directory)
    status = 0
    for label in list_protocols(directory):
        digest = _read(directory / f"{label}.toml").hash
        ok = pins.get(label) == digest
        status |= not ok
        print(f"{label}  {digest}  {'pinned' if ok else 'NOT PINNED'}")
    return status
