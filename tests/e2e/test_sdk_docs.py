"""The quick start of docs/sdk.md runs as written against the running system."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import ROOT, System


def quick_start() -> str:
    text = (ROOT / "docs" / "sdk.md").read_text()
    section = text.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/sdk.md has no python block under Quick start"
    return match.group(1)


def test_the_quick_start_runs_as_written(system: System, tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quick_start())
    # As the doc says: run from the checkout with the project's Python; TIDINGS_URL points it at
    # the test system's gateway (its default is the one `tidings up` starts).
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={**os.environ, "TIDINGS_URL": system.http},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"alice's message was acknowledged as \d+", lines[0]), lines
    assert lines[1] == "bob got 'Hello, Bob!' from alice", lines
    assert lines[2].startswith("the last messages: [") and lines[2].endswith("'Hello, Bob!']"), lines
