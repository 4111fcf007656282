"""The card format (dmattack.card.schema) and the leaderboard site, checked in headless Chromium
through chromedriver's W3C WebDriver HTTP interface (no Python package beyond the stdlib)."""

import copy
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from cli import main as cli_main
from dmattack.card import check_card, load_protocol, protocol_identity, write_leaderboard
from dmattack.core.errors import ConfigError, InputFileError, OutputError

EVIL = '<script>window.pwned = 1</script> "Robust" & co'
QUICK = protocol_identity(load_protocol("digits-quick-v2"))
FULL = protocol_identity(load_protocol("digits-v2"))
# (protocol, model name, fingerprint digit, clean_quality, damage_auc_strongest)
CARDS = [(QUICK, "digits-ddpm", "a", 40.5, 0.30), (QUICK, EVIL, "b", 12.25, 0.91),
         (FULL, "digits-robust-adv", "c", 20.0, 0.50)]


def entry(label: str, value: float, better: str = "lower") -> dict:
    return {"label": label, "value": value, "ci95": [value * 0.9, value * 1.1], "n": 128,
            "better": better}


def card_obj(protocol: dict, model: str, fp: str, quality: float, damage: float) -> dict:
    return {
        "card_format": 1, "protocol": dict(protocol),
        "model": {"name": model, "source": f"checkpoints/{fp}", "fingerprint": fp * 64},
        "headline": {"clean_quality": entry("FID (digits-cnn)", quality),
                     "damage_auc_strongest": entry("damage AUC, strongest", damage),
                     "damage_auc_relative_to_random": entry("AUC / random", damage * 3)},
        "measurements": {"clean": {"fid": quality}}, "convergence": {"trajectory": True},
        "provenance": {"versions": {}}, "seeds": [0, 1, 2], "seconds": {"total": 61.5},
        "files": {"md": "card.md", "curves": "curves.png"}}


def write_card(folder: Path, obj: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps(obj))
    (folder / "card.md").write_text(f"# card of {obj['model']['name']}\n")
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "curves.png")
    return folder / "card.json"


@pytest.fixture
def cards(tmp_path) -> list[Path]:
    return [write_card(tmp_path / f"card{i}", card_obj(*c)) for i, c in enumerate(CARDS)]


# ----------------------------------------------------------------------------- card format
def test_a_valid_card_passes():
    check_card(card_obj(*CARDS[0]))


@pytest.mark.parametrize("path,value,message", [
    (("card_format",), 2, "card_format = 2 is not 1"),
    (("protocol", "hash"), "abc", "protocol.hash = 'abc' is not a sha256"),
    (("protocol", "version"), 0, "protocol.version = 0 is not an integer >= 1"),
    (("model", "fingerprint"), "XYZ", "model.fingerprint = 'XYZ' is not a sha256"),
    (("headline", "clean_quality", "better"), "up", "better = 'up' is not one of higher, lower"),
    (("headline", "clean_quality", "value"), float("nan"), "value = nan is not a finite number"),
    (("headline", "clean_quality", "ci95"), [2.0, 1.0], "ci95 = [2.0, 1.0] has lo > hi"),
    (("headline", "clean_quality", "n"), 0, "headline.clean_quality.n = 0 is not an integer"),
    (("headline", "fid"), entry("FID", 1.0), "headline has unknown key 'fid'; allowed: "
     "clean_quality, damage_auc_strongest"),
    (("files", "curves"), "../../etc/passwd", "files.curves = '../../etc/passwd' is not a "
     "plain file name"),
    (("seeds",), [0, "1"], "seeds = [0, '1'] is not a list of integers"),
    (("seconds", "total"), -1, "seconds.total = -1 is negative"),
    (("extra",), 1, "card has unknown key 'extra'"),
])
def test_bad_cards_are_one_line_errors(path, value, message):
    obj = copy.deepcopy(card_obj(*CARDS[0]))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        check_card(obj)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_card_lacking_a_key_names_it():
    obj = card_obj(*CARDS[0])
    del obj["model"]["source"]
    with pytest.raises(ConfigError, match="model lacks key 'source'"):
        check_card(obj)


# ----------------------------------------------------------------------------- the site
class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.hrefs += [v for k, v in attrs if tag == "a" and k == "href"]
        self.scripts += tag == "script"


def test_site_copies_every_card_and_links_resolve(cards, tmp_path):
    index = write_leaderboard(cards, tmp_path / "site")
    assert index == (tmp_path / "site" / "index.html") and index.is_absolute()
    page = Links()
    page.feed(index.read_text(encoding="utf-8"))
    assert page.scripts == 1  # ours only: the model name's <script> is text
    assert len(page.hrefs) == 3 * len(cards)
    for href in page.hrefs:
        assert (index.parent / href).is_file(), href
    for card in cards:
        folder = next(p for p in (index.parent / "cards").iterdir()
                      if (p / "card.json").read_bytes() == card.read_bytes())
        assert (folder / "curves.png").read_bytes() == (card.parent / "curves.png").read_bytes()
    manifest = json.loads((index.parent / "leaderboard.json").read_text())
    assert [(p["protocol"], len(p["cards"])) for p in manifest["protocols"]] == [(FULL, 1),
                                                                            (QUICK, 2)]


def test_model_names_are_escaped(cards, tmp_path):
    html = write_leaderboard(cards, tmp_path / "site").read_text(encoding="utf-8")
    assert "<script>window.pwned" not in html
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt; &quot;Robust&quot; &amp; co" in html


def test_each_protocol_table_shows_its_identity(cards, tmp_path):
    html = write_leaderboard(cards, tmp_path / "site").read_text(encoding="utf-8")
    for ident in (QUICK, FULL):
        assert f"<code>{ident['hash']}</code>" in html
        assert f"<h2>{ident['name']}-v{ident['version']}</h2>" in html


def test_rewriting_replaces_the_old_site(cards, tmp_path):
    write_leaderboard(cards, tmp_path / "site")
    write_leaderboard(cards[:1], tmp_path / "site")
    assert len(list((tmp_path / "site" / "cards").iterdir())) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site.")]


def test_bad_inputs_leave_the_old_site_whole(cards, tmp_path):
    index = write_leaderboard(cards, tmp_path / "site")
    before = index.read_text()
    obj = json.loads(cards[0].read_text())
    obj["headline"]["clean_quality"]["ci95"] = [1]
    bad = write_card(tmp_path / "bad", obj)
    with pytest.raises(InputFileError, match=r"bad/card.json: card: headline.clean_quality.ci95"):
        write_leaderboard([cards[1], bad], tmp_path / "site")
    (cards[2].parent / "curves.png").unlink()
    with pytest.raises(InputFileError, match="curves.png .named in files. is not beside it"):
        write_leaderboard(cards, tmp_path / "site")
    with pytest.raises(InputFileError, match="same model under the same protocol"):
        write_leaderboard([cards[0], cards[0].parent], tmp_path / "site")
    assert index.read_text() == before


def test_a_foreign_folder_is_not_overwritten(cards, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="is not empty and holds no leaderboard.json"):
        write_leaderboard(cards, tmp_path / "mine")
    assert os.listdir(tmp_path / "mine") == ["thesis.tex"]


def test_cli_prints_the_index_path_and_fails_in_one_line(cards, tmp_path, capsys):
    def run(*args: str) -> int:
        with pytest.raises(SystemExit) as done:
            cli_main([*args], prog_name="dmattack")
        return done.value.code

    assert run("leaderboard", *map(str, cards), "--out", str(tmp_path / "site")) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "site" / "index.html").resolve())
    (tmp_path / "junk.json").write_text("{not json")
    assert run("leaderboard", str(tmp_path / "junk.json"), "--out", str(tmp_path / "s2")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: card ") and "junk.json is not readable JSON" in err
    assert "\n" not in err and not (tmp_path / "s2").exists()
    assert run("leaderboard", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s2")) == 2
    assert "nowhere not found (give card.json or its folder)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the browser
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]  # the last: containers with a small /dev/shm
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C web element key


def _browser() -> tuple[str, str] | None:
    """(chromium binary, chromedriver) from the system packages, or None."""
    driver = shutil.which("chromedriver")
    binary = next((b for b in ("/usr/lib/chromium/chromium", shutil.which("chromium"))
                   if b and os.access(b, os.X_OK)), None)
    return (binary, driver) if binary and driver else None


@pytest.fixture
def browser(tmp_path):
    """A WebDriver session of headless Chromium: a function ``call(method, path, body)``."""
    found = _browser()
    if found is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("chromium/chromedriver missing in CI: scripts/test.sh must install them")
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium "
                    "chromium-driver); CI installs them")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([found[1], f"--port={port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def call(method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["value"]

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            assert proc.poll() is None, f"chromedriver exited with code {proc.returncode}"
            assert time.monotonic() < deadline, "chromedriver not ready after 30 s"
            time.sleep(0.1)
        caps = {"browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {"binary": found[0], "args": FLAGS + [
                    f"--user-data-dir={tmp_path / 'profile'}"]}}
        session = call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        try:
            yield lambda method, path, body=None: call(method, f"/session/{session}{path}", body)
        finally:
            call("DELETE", f"/session/{session}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def console_errors(call) -> list[str]:
    return [e["message"] for e in call("POST", "/se/log", {"type": "browser"})
            if e["level"] == "SEVERE"]


def table_models(call) -> list[list[str]]:
    """Model names of each table's rows, in page order."""
    return call("POST", "/execute/sync", {"args": [], "script": (
        "return Array.from(document.querySelectorAll('section.protocol')).map(s => "
        "Array.from(s.querySelectorAll('tbody tr')).map(r => "
        "r.querySelector('.model').textContent));")})


def click_header(call, table: int, column: int) -> None:
    heads = call("POST", "/elements", {"using": "css selector",
                                       "value": "section.protocol thead th button"})
    per_table = len(heads) // 2
    call("POST", f"/element/{heads[table * per_table + column][ELEMENT]}/click", {})


def test_the_console_check_sees_a_script_error(browser, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><title>x</title><script>notDefined()</script>")
    browser("POST", "/url", {"url": page.as_uri()})
    assert any("notDefined" in m for m in console_errors(browser))


def test_the_page_loads_shows_every_card_and_sorts(browser, cards, tmp_path):
    index = write_leaderboard(cards, tmp_path / "site")
    browser("POST", "/url", {"url": index.as_uri()})
    assert browser("GET", "/title") == "dmattack leaderboard"
    assert console_errors(browser) == []
    assert browser("POST", "/execute/sync", {"script": "return window.pwned", "args": []}) \
        is None
    # tables by protocol name (digits-v2, digits-quick-v2), rows by model name
    assert table_models(browser) == [["digits-robust-adv"], [EVIL, "digits-ddpm"]]
    click_header(browser, 1, 1)  # clean_quality ascending: 12.25 before 40.5
    assert table_models(browser)[1] == [EVIL, "digits-ddpm"]
    click_header(browser, 1, 1)  # again: descending
    assert table_models(browser)[1] == ["digits-ddpm", EVIL]
    click_header(browser, 1, 2)  # damage ascending: 0.30 before 0.91
    assert table_models(browser)[1] == ["digits-ddpm", EVIL]
    click_header(browser, 1, 2)
    assert table_models(browser)[1] == [EVIL, "digits-ddpm"]
    click_header(browser, 1, 0)  # model name, as text
    assert table_models(browser)[1] == [EVIL, "digits-ddpm"]
    click_header(browser, 1, 0)
    assert table_models(browser)[1] == ["digits-ddpm", EVIL]
    assert table_models(browser)[0] == ["digits-robust-adv"]
    assert console_errors(browser) == []
