"""The SDK's reference in docs/sdk.md is generated from its docstrings and up to date, and the
SDK stands on the contract alone: it imports nothing of the server."""

from __future__ import annotations

import ast
from pathlib import Path

from tidings_client import reference

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "sdk.md"


def test_the_api_reference_in_docs_sdk_md_is_up_to_date() -> None:
    text = DOC.read_text()
    assert reference.rewrite(text) == text, "run: .venv/bin/python -m tidings_client.reference docs/sdk.md"
    for name in ("async send(", "async history(", "### `RateLimited` (code `rate_limited`)", "### `Backoff("):
        assert name in text


# The end-to-end encryption subpackage (an optional extra) does its cryptography with vodozemac
# and derives its storage key with ``cryptography``; the rest of the SDK needs neither.
E2EE_ONLY = {"vodozemac", "cryptography"}


def test_the_sdk_imports_only_the_standard_library_websockets_and_httpx() -> None:
    server = {"events", "commands", "projections", "streams", "query_api", "archive", "tidings"}
    package = ROOT / "client" / "tidings_client"
    for path in sorted(package.rglob("*.py")):
        allowed = {"tidings_client", "websockets", "httpx"}
        if path.relative_to(package).parts[0] == "e2ee":
            allowed |= E2EE_ONLY
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module.split(".")[0]]
            for name in names:
                assert name not in server, f"{path.name} imports the server's {name}"
                assert name in allowed or name in _stdlib(), f"{path.name} imports {name}"


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names) | {"__future__"}
