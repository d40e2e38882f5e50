"""``python3 -m tidings ...`` from a fresh checkout: the first of the README's two commands.

Standard library only. Outside the project's virtualenv it creates ``.venv`` (installing
Debian's venv package when run as root and it is missing), installs the project into it when
``pyproject.toml`` changed, and re-runs itself there; inside, it hands over to the CLI.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".tidings-installed"


def _say(text: str) -> None:
    print(f"tidings: {text}", file=sys.stderr, flush=True)


def _in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _make_venv() -> None:
    if PYTHON.exists():
        return
    _say(f"creating {VENV}")
    result = subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=False)
    if result.returncode == 0:
        return
    package = f"python3.{sys.version_info.minor}-venv"
    if os.geteuid() != 0:
        sys.exit(f"tidings: Python's venv module is missing; run: sudo apt-get install -y {package}")
    _say(f"installing {package}")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
    subprocess.run(["rm", "-rf", str(VENV)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)


def _install() -> None:
    # The project and its Python SDK (client/, used by the tests and `tidings chat`).
    manifests = [ROOT / "pyproject.toml", ROOT / "client" / "pyproject.toml"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in manifests if p.exists())).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    _say("installing Python dependencies into .venv (once per pyproject.toml change)")
    pip = [str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]", "-e", str(ROOT / "client")], check=True)
    STAMP.write_text(digest)


def _in_checkout() -> bool:
    # An installed wheel (a container image) has no pyproject.toml beside the package: no
    # bootstrap there, just the CLI.
    return (ROOT / "pyproject.toml").exists()


def main() -> None:
    if _in_checkout() and not _in_venv():
        _make_venv()
        _install()
        os.execv(str(PYTHON), [str(PYTHON), "-m", "tidings", *sys.argv[1:]])
    from tidings.cli import app

    app(prog_name="tidings")


if __name__ == "__main__":
    main()
