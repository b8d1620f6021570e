"""The install line of a missing extra: true for where this copy came from (PEP 610),
never repeating a credential or a query of the recorded URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backfill import install
from backfill.install import install_line


class Recorded:
    """A distribution's metadata with (or without) a ``direct_url.json``."""

    def __init__(self, origin: dict[str, Any] | str | None) -> None:
        self._origin = origin

    def read_text(self, name: str) -> str | None:
        assert name == "direct_url.json"
        if self._origin is None or isinstance(self._origin, str):
            return self._origin
        return json.dumps(self._origin)


def recorded(monkeypatch: pytest.MonkeyPatch, *origins: dict[str, Any] | str | None) -> None:
    monkeypatch.setattr(install.metadata, "distributions",
                        lambda name: [Recorded(o) for o in origins])


def test_from_the_index_the_line_names_the_distribution(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    recorded(monkeypatch, None)
    monkeypatch.setattr(install, "__file__", str(tmp_path / "site" / "backfill" / "install.py"))
    assert install_line("tables") == "pip install 'growingio-backfill[tables]'"


def test_from_a_clone_the_line_installs_the_same_folder(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    # A build's metadata without a record comes first on the path: the one with it counts.
    recorded(monkeypatch, None, {"url": "file:///home/ann/src/back%20fill",
                                 "dir_info": {"editable": True}})
    assert install_line("aws") == "pip install -e '/home/ann/src/back fill[aws]'"
    recorded(monkeypatch, {"url": "file:///home/ann/src/backfill", "dir_info": {}})
    assert install_line("aws") == "pip install '/home/ann/src/backfill[aws]'"


def test_from_a_wheel_file_the_line_installs_that_wheel(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    recorded(monkeypatch, {"url": "file:///dist/growingio_backfill-0.1.0-py3-none-any.whl",
                           "archive_info": {}})
    assert install_line("tables") == (
        "pip install '/dist/growingio_backfill-0.1.0-py3-none-any.whl[tables]'")


def test_from_git_the_line_pins_the_commit_and_drops_credentials(
        monkeypatch: pytest.MonkeyPatch) -> None:
    recorded(monkeypatch, {"url": "https://ann:ghp_s3cret@git.example.com/data/backfill.git",
                           "vcs_info": {"vcs": "git", "commit_id": "0123abc"}})
    line = install_line("iceberg")
    assert line == ("pip install 'growingio-backfill[iceberg] @ "
                    "git+https://git.example.com/data/backfill.git@0123abc'")
    assert "s3cret" not in line and "ann" not in line
    recorded(monkeypatch, {"url": "https://${GIT_TOKEN}@git.example.com/data/backfill.git",
                           "vcs_info": {"vcs": "git", "commit_id": "0123abc"}})
    assert "git+https://${GIT_TOKEN}@git.example.com/" in install_line("aws")  # a placeholder
    recorded(monkeypatch, {"url": "ssh://git@git.example.com/data/backfill.git",
                           "vcs_info": {"vcs": "git", "commit_id": "0123abc"}})
    assert "git+ssh://git@git.example.com/data/backfill.git@0123abc" in install_line("aws")


def test_an_archive_url_loses_its_query(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded(monkeypatch, {"url": "https://files.example.com/b.whl?X-Amz-Signature=abc",
                           "archive_info": {}})
    assert install_line("aws") == (
        "pip install 'growingio-backfill[aws] @ https://files.example.com/b.whl'")


def test_an_unreadable_record_is_the_index(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    recorded(monkeypatch, "{not json", "[1]")
    monkeypatch.setattr(install, "__file__", str(tmp_path / "backfill" / "install.py"))
    assert install_line("tables") == "pip install 'growingio-backfill[tables]'"

