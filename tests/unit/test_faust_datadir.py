"""Faust's directories (it makes ``<datadir>/<app id>-data`` at start, even with the in-memory
store) go where the composition root says, or to the system's temporary directory: never into
the working directory, which they used to fill with empty directories."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.unit.offline_app import offline_app


def test_faust_makes_its_directories_where_the_root_says(tmp_path: Path) -> None:
    app = offline_app("t-datadir", datadir=tmp_path / "state" / "faust")
    app._create_directories()  # what Faust does at start
    assert app.conf.datadir == tmp_path / "state" / "faust" / "t-datadir-data"
    assert (tmp_path / "state" / "faust" / "t-datadir-data").is_dir()


def test_without_a_datadir_nothing_goes_into_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = offline_app("t-datadir")
    app._create_directories()
    assert list(tmp_path.iterdir()) == []
    assert Path(tempfile.gettempdir()) in app.conf.datadir.parents
