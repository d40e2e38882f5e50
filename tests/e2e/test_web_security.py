"""What the gateway lets through without a token for the web client, and nothing more; the
development sign-in exists only when turned on; the page's Content-Security-Policy."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from query_api.auth import verify_token
from query_api.web import WEB_DIR
from tests.e2e.conftest import System, user
from tests.e2e.web_support import WebGateway


@pytest.fixture
def web(system: System, tmp_path: Path) -> Iterator[WebGateway]:
    gateway = WebGateway(system, tmp_path)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def fetch(url: str, *, method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_the_development_sign_in_is_off_by_default(system: System) -> None:
    status, _, body = fetch(
        f"{system.http}/v1/dev/token", method="POST", body=orjson.dumps({"user_id": user()})
    )
    assert status == 404 and orjson.loads(body)["error"]["code"] == "not_found"
    assert system.settings.dev_login is False


def test_the_development_sign_in_when_on(system: System, web: WebGateway) -> None:
    alice = user()
    status, _, body = fetch(
        f"{web.http}/v1/dev/token", method="POST", body=orjson.dumps({"user_id": alice, "device_id": "web-1"})
    )
    assert status == 200
    answer = orjson.loads(body)
    principal = verify_token(system.settings.resolved_auth_secret(), answer["token"])
    assert (principal.user_id, principal.device_id) == (alice, "web-1")
    assert answer["expires_ts"] > time.time() * 1000
    # the token works on any gateway
    status, _ = system.request("GET", "/v1/conversations", token=answer["token"])
    assert status == 200
    for bad in ({"user_id": "no spaces"}, {"user_id": alice, "device_id": ""}, {}):
        status, _, body = fetch(f"{web.http}/v1/dev/token", method="POST", body=orjson.dumps(bad))
        assert status == 400 and orjson.loads(body)["error"]["code"] == "invalid"


def test_only_the_clients_files_are_public(web: WebGateway) -> None:
    for path in ("/", "/web/app.js", "/web/style.css"):
        status, headers, _ = fetch(f"{web.http}{path}")
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
    assert fetch(f"{web.http}/web/app.js")[1]["Content-Type"].startswith("text/javascript")
    # outside the client's folder: nothing, and the API still wants a token
    for path in ("/web/../app.py", "/web/%2e%2e/app.py", "/web/..%2fapp.py"):
        assert fetch(f"{web.http}{path}")[0] in (400, 404), path
    for path in ("/v1/conversations", "/v1/sync", "/webx", "/index.html"):
        assert fetch(f"{web.http}{path}")[0] in (401, 404), path
    assert fetch(f"{web.http}/v1/conversations")[0] == 401


def test_the_page_has_no_inline_script_or_style() -> None:
    html = (WEB_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all('src="/web/' in s for s in scripts)
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html)  # no inline code
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    for js in WEB_DIR.glob("*.js"):
        text = js.read_text()
        assert "innerHTML" not in text and "eval(" not in text, js.name
        assert "localStorage" not in text, js.name  # the token lives in sessionStorage only
