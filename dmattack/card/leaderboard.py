"""The leaderboard: a static site of cards, one sortable table per protocol (docs/card.md).

:func:`write_leaderboard` validates every card (:func:`dmattack.card.schema.check_card`), copies
each card's ``card.json``, ``card.md`` and curves PNG to ``cards/<model>-<fingerprint[:8]>-
<protocol hash[:8]>/`` and writes ``index.html`` (inline CSS and JavaScript; no server, no
network at view time) and ``leaderboard.json`` (the rows, for scripts). The site is built in a
temporary folder beside ``out_dir`` and swapped in, so a failure leaves the old site whole.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.errors import ConfigError, InputFileError, OutputError
from ..core.io import provenance, write_atomic, write_json
from .schema import HEADLINE_KEYS, check_card

MANIFEST = "leaderboard.json"


@dataclass(frozen=True)
class Card:
    """One validated card and the folder its files come from."""
    path: Path
    data: dict[str, Any]

    @property
    def folder_name(self) -> str:
        """``<model>-<fingerprint[:8]>-<protocol hash[:8]>``, safe as a path and a URL."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.data["model"]["name"]).strip("-.")[:40]
        return (f"{slug or 'model'}-{self.data['model']['fingerprint'][:8]}-"
                f"{self.data['protocol']['hash'][:8]}")

    def files(self) -> list[Path]:
        """card.json, then the card's markdown and curves files (all beside card.json)."""
        return [self.path] + [self.path.parent / self.data["files"][k] for k in ("md", "curves")]


def load_card(path: str | os.PathLike) -> Card:
    """A card.json file, or a folder holding one, read and validated (one-line errors)."""
    path = Path(path)
    if path.is_dir():
        path = path / "card.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"card {path} not found (give card.json or its folder)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputFileError(f"card {path} is not readable JSON: {e}") from None
    try:
        check_card(data)
    except ConfigError as e:
        raise InputFileError(f"{path}: {e}") from None
    card = Card(path, data)
    for f in card.files()[1:]:
        if not f.is_file():
            raise InputFileError(f"card {path}: {f.name} (named in files) is not beside it")
    return card


def _groups(cards: Sequence[Card]) -> list[list[Card]]:
    """Cards grouped by protocol hash (name, version, hash order); one identity per hash."""
    by_hash: dict[str, list[Card]] = {}
    for card in cards:
        by_hash.setdefault(card.data["protocol"]["hash"], []).append(card)
    for group in by_hash.values():
        identities = {(c.data["protocol"]["name"], c.data["protocol"]["version"]) for c in group}
        if len(identities) > 1:
            raise InputFileError(f"cards {group[0].path} and {group[1].path} share protocol hash "
                                 f"{group[0].data['protocol']['hash'][:12]}… under different "
                                 f"names or versions {sorted(identities)}")
    def identity(g: list[Card]) -> tuple[str, int, str]:
        p = g[0].data["protocol"]
        return p["name"], p["version"], p["hash"]

    return sorted((sorted(g, key=lambda c: c.data["model"]["name"]) for g in by_hash.values()),
                  key=identity)


def _num(x: float) -> str:
    return f"{x:.4g}"


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return '<td class="num" data-value="">—</td>'
    lo, hi = entry["ci95"]
    return (f'<td class="num" data-value="{entry["value"]!r}">{escape(_num(entry["value"]))}'
            f'<span class="ci"> [{escape(_num(lo))}, {escape(_num(hi))}]</span>'
            f'<span class="n"> n={entry["n"]}</span></td>')


def _links(card: Card) -> str:
    base = quote(f"cards/{card.folder_name}")
    names = [("card.json", "JSON"), (card.data["files"]["md"], "card"),
             (card.data["files"]["curves"], "curves")]
    return " · ".join(f'<a href="{base}/{quote(n)}">{label}</a>' for n, label in names)


def _header(key: str, group: list[Card]) -> str:
    entry = next(c.data["headline"][key] for c in group if key in c.data["headline"])
    arrow = "↑" if entry["better"] == "higher" else "↓"
    return (f'<th aria-sort="none" data-kind="num"><button type="button">{escape(entry["label"])}'
            f' <span title="{escape(entry["better"])} is better">{arrow}</span></button></th>')


def _table(group: list[Card]) -> str:
    ident = group[0].data["protocol"]
    keys = [k for k in HEADLINE_KEYS if any(k in c.data["headline"] for c in group)]
    head = ('<th aria-sort="none" data-kind="text"><button type="button">model</button></th>'
            + "".join(_header(k, group) for k in keys) + "<th>files</th>")
    rows = []
    for c in group:
        m = c.data["model"]
        model = (f'<td data-value="{escape(m["name"])}"><span class="model">{escape(m["name"])}'
                 f'</span><br><code title="{escape(m["fingerprint"])}">'
                 f'{escape(m["fingerprint"][:12])}</code> <span class="src">'
                 f'{escape(m["source"])}</span></td>')
        cells = "".join(_cell(c.data["headline"].get(k)) for k in keys)
        rows.append(f'<tr>{model}{cells}<td class="files">{_links(c)}</td></tr>')
    title = f"{ident['name']}-v{ident['version']}"
    return (f'<section class="protocol" data-hash="{escape(ident["hash"])}">\n'
            f'<h2>{escape(title)}</h2>\n<p class="identity">protocol <b>{escape(ident["name"])}'
            f'</b>, version <b>{ident["version"]}</b>, hash <code>{escape(ident["hash"])}</code>'
            f' · {len(group)} card{"s" if len(group) != 1 else ""}</p>\n'
            f'<table class="board"><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody></table>\n</section>")


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;
color:#1b1b1b}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin:2rem 0 .2rem}
.identity{color:#444;margin:.2rem 0 .6rem}code{font-size:.85em}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;
text-align:left;vertical-align:top}td.num{text-align:right;white-space:nowrap}
th button{font:inherit;font-weight:600;background:none;border:0;padding:0;cursor:pointer}
th[aria-sort=ascending] button::after{content:" \\25B2"}
th[aria-sort=descending] button::after{content:" \\25BC"}
.ci,.n,.src{color:#666;font-size:.85em}.model{font-weight:600}td.files{white-space:nowrap}
"""

SCRIPT = """
document.querySelectorAll("table.board").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    var button = th.querySelector("button");
    if (!button) { return; }
    button.addEventListener("click", function () {
      var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
      Array.prototype.forEach.call(heads, function (h) {
        if (h.hasAttribute("aria-sort")) { h.setAttribute("aria-sort", "none"); }
      });
      th.setAttribute("aria-sort", dir);
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var numeric = th.getAttribute("data-kind") === "num";
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-value");
        var y = b.cells[col].getAttribute("data-value");
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var c = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return dir === "ascending" ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:")


def _page(groups: list[list[Card]]) -> str:
    """index.html: everything inline; the CSP forbids every request but the card links."""
    count = sum(len(g) for g in groups)
    tables = "\n".join(_table(g) for g in groups)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<link rel="icon" href="data:,">\n<title>dmattack leaderboard</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>dmattack leaderboard</h1>\n"
            f"<p>{count} card{'s' if count != 1 else ''} under {len(groups)} "
            f"protocol{'s' if len(groups) != 1 else ''}. Each number is a point estimate with "
            "its 95% bootstrap interval and the number of samples; ↓ marks a number where lower "
            "is better, ↑ higher. Cards are compared only within one protocol hash. Click a "
            "column to sort by it; click again to reverse.</p>\n"
            f"{tables}\n<script>{SCRIPT}</script>\n</body>\n</html>\n")


def _manifest(groups: list[list[Card]]) -> dict[str, Any]:
    return {"leaderboard_format": 1, "protocols": [
        {"protocol": g[0].data["protocol"],
         "cards": [{"folder": f"cards/{c.folder_name}", "model": c.data["model"],
                    "headline": c.data["headline"]} for c in g]} for g in groups],
        "provenance": provenance()}


def _check_out(out: Path) -> None:
    """``out`` must be new, empty, or an earlier leaderboard (which is replaced)."""
    if out.exists() and not out.is_dir():
        raise OutputError(errno.ENOTDIR, f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputError(errno.ENOTEMPTY, f"--out {out} is not empty and holds no "
                          f"{MANIFEST}: give a new or empty folder, or an earlier leaderboard "
                          "to replace")


def _swap(new: Path, out: Path) -> None:
    """Move the finished site ``new`` to ``out``, replacing an earlier one."""
    if not out.exists():
        new.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(old / "site")
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write_leaderboard(card_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike
                      ) -> Path:
    """Write the leaderboard site of ``card_paths`` (card.json files or their folders) to
    ``out_dir``; returns the absolute path of its ``index.html``."""
    if not card_paths:
        raise ConfigError("leaderboard needs at least one card (card.json or its folder)")
    cards = [load_card(p) for p in card_paths]
    seen: dict[str, Path] = {}
    for c in cards:
        if c.folder_name in seen:
            raise InputFileError(f"cards {seen[c.folder_name]} and {c.path} are the same model "
                                 "under the same protocol: give each card once")
        seen[c.folder_name] = c.path
    groups = _groups(cards)
    out = Path(out_dir).absolute()
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)
        for c in cards:
            dest = tmp / "cards" / c.folder_name
            dest.mkdir(parents=True)
            for f in c.files():
                shutil.copyfile(f, dest / f.name)
        page = _page(groups)
        write_atomic(tmp / "index.html", lambda p: p.write_text(page, encoding="utf-8"))
        write_json(tmp / MANIFEST, _manifest(groups))
        _swap(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"
