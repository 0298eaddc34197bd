"""The web console's static bundle, without Ray: what ``eyenet.serving.console.asset`` serves and refuses,
that the page loads nothing from another origin, and that the vendored uPlot is the pinned one."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from eyenet.serving import console

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "console" / "package-lock.json"
PACKAGE = REPO / "console" / "package.json"
OWN = ("index.html", "console.js", "console.css")


def _text(name: str) -> str:
    return (console.STATIC / name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# asset()


@pytest.mark.parametrize(("path", "kind"), [
    ("index.html", "text/html"),
    ("console.js", "text/javascript"),
    ("console.css", "text/css"),
    ("vendor/uPlot.iife.min.js", "text/javascript"),
    ("vendor/uPlot.min.css", "text/css"),
])
def test_asset_serves_the_bundle_with_its_content_type(path, kind):
    found = console.asset(path)
    assert found is not None, path
    body, content_type = found
    assert content_type.split(";")[0] == kind
    assert body == (console.STATIC / path).read_bytes()
    assert body


def test_index_is_the_page():
    assert console.INDEX == "index.html"
    body, content_type = console.asset(console.INDEX)
    assert content_type == "text/html; charset=utf-8"
    assert body.lstrip().lower().startswith(b"<!doctype html>")


@pytest.mark.parametrize("path", [
    "",
    "missing.html",
    "vendor",  # a directory
    "vendor/",
    "../__init__.py",
    "../console/static/index.html",
    "vendor/../../__init__.py",
    "vendor/../index.html",  # even when it would land inside
    "./index.html",
    "%2e%2e/__init__.py",  # not URL-decoded: a name that does not exist
    "%2e%2e%2f__init__.py",
    "..%2findex.html",
    "/index.html",
    "//index.html",
    "\\index.html",
    "..\\__init__.py",
    "C:/index.html",
    "index.html\x00.png",
    ".hidden.css",
])
def test_asset_refuses(path):
    assert console.asset(path) is None


def test_asset_refuses_an_absolute_path_even_to_a_real_file():
    assert console.asset(str(console.STATIC / "index.html")) is None
    assert console.asset(str((console.STATIC / "index.html").resolve())) is None


def test_asset_serves_only_known_types(tmp_path, monkeypatch):
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "notes.txt").write_text("not part of the console")
    (tmp_path / "icon.svg").write_text("<svg/>")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG")
    (tmp_path / "favicon.ico").write_bytes(b"\x00\x00\x01\x00")
    monkeypatch.setattr(console, "STATIC", tmp_path)
    assert console.asset("notes.txt") is None
    assert console.asset("icon.svg") == (b"<svg/>", "image/svg+xml")
    assert console.asset("logo.png") == (b"\x89PNG", "image/png")
    assert console.asset("favicon.ico") == (b"\x00\x00\x01\x00", "image/x-icon")


def test_asset_refuses_symlinks_out_of_static(tmp_path, monkeypatch):
    static = tmp_path / "static"
    outside = tmp_path / "outside"
    static.mkdir()
    outside.mkdir()
    (static / "index.html").write_text("inside")
    (outside / "secret.html").write_text("secret")
    (outside / "secret.js").write_text("secret")
    try:
        (static / "leak.html").symlink_to(outside / "secret.html")
        (static / "dir").symlink_to(outside, target_is_directory=True)
        (static / "alias.html").symlink_to(static / "index.html")
        (static / "loop.html").symlink_to(static / "loop.html")
    except OSError as exc:  # pragma: no cover - a file system without symlinks
        pytest.skip(f"symlinks not available: {exc}")
    monkeypatch.setattr(console, "STATIC", static)
    assert console.asset("index.html") == (b"inside", "text/html; charset=utf-8")
    assert console.asset("leak.html") is None
    assert console.asset("dir/secret.js") is None
    assert console.asset("loop.html") is None
    assert console.asset("alias.html") == (b"inside", "text/html; charset=utf-8")  # inside: served


# ---------------------------------------------------------------------------------------------
# same origin only


_ABSOLUTE_URL = re.compile(r"""(?i)\b(?:https?|wss?|ftp):|(?<![:\w/\\])//[a-z0-9.-]+\.[a-z]{2,}""")


@pytest.mark.parametrize("name", OWN)
def test_no_absolute_or_cdn_urls(name):
    text = _text(name)
    assert not _ABSOLUTE_URL.search(text), _ABSOLUTE_URL.search(text).group(0)
    for cdn in ("cdn", "unpkg", "jsdelivr", "googleapis", "cloudflare", "esm.sh", "skypack"):
        assert cdn not in text.lower(), cdn


def test_the_page_references_only_relative_files_that_are_served():
    html = _text("index.html")
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", html)
    files = [r for r in refs if not r.startswith("#")]
    assert "console.js" in files and "console.css" in files
    assert "vendor/uPlot.iife.min.js" in files and "vendor/uPlot.min.css" in files
    for ref in files:
        assert not ref.startswith(("/", "\\")) and ":" not in ref, ref
        assert console.asset(ref) is not None, ref
    assert "<script>" not in html.replace(" ", "").lower()  # no inline script
    assert not re.search(r"\bimport\s*\(|\bimportScripts\b|new\s+WebSocket|EventSource", _text("console.js"))


def test_css_loads_nothing():
    css = _text("console.css")
    assert "@import" not in css
    assert "url(" not in css


# ---------------------------------------------------------------------------------------------
# the vendored uPlot is the pinned one


def test_vendored_uplot_matches_the_lockfile():
    lock = json.loads(LOCK.read_text())
    pinned = lock["packages"]["node_modules/uplot"]["version"]
    declared = json.loads(PACKAGE.read_text())["dependencies"]
    assert declared == {"uplot": pinned}, "package.json pins exactly the locked uplot and nothing else"
    head = (console.STATIC / "vendor" / "uPlot.iife.min.js").read_text(encoding="utf-8")[:300]
    match = re.search(r"uPlot \(v(\d+\.\d+\.\d+)\)", head)
    assert match, head[:120]
    assert match.group(1) == pinned
    assert "var uPlot=" in head  # the IIFE build: window.uPlot
    assert (console.STATIC / "vendor" / "uPlot.min.css").read_text(encoding="utf-8").startswith(".uplot")


# ---------------------------------------------------------------------------------------------
# the script


def test_console_js_parses():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: console.js not syntax-checked")
    out = subprocess.run([node, "--check", str(console.STATIC / "console.js")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_the_element_ids_the_browser_tests_use():
    html, js = _text("index.html"), _text("console.js")
    for element_id in ("error", "login-key", "logout", "identity", "main"):
        assert f'id="{element_id}"' in html, element_id
    for literal in ('"series-chart"', '"alarms"', '"feedback-counts"', "`served-${name}`",
                    "`${a.kind}-${name}`", "`job-${job.id}`", "`cancel-${job.id}`", "drawMs",
                    '"Authorization"', "sessionStorage", "document.hidden"):
        assert literal.strip('"') in js, literal
    for kind in ("promote", "rollback", "review"):
        assert f'kind: "{kind}"' in js
