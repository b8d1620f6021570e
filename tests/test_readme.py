"""The README's commands are the ones CI runs, so the first screen never goes stale."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shell_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    first_screen = readme.split("\n---\n")[0]
    test_command = next(b for b in shell_blocks(first_screen) if "pytest" in b)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    # Markdown links [text](target) and bare `path` mentions in backquotes that name files
    # of this repository; web links are left to the reader.
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = document.read_text()
        targets = re.findall(r"\]\(([^)\s]+)\)", text)
        assert targets, f"{document.name} links to nothing: the pattern is broken"
        for target in targets:
            if re.match(r"^[a-z]+://|^mailto:|^#", target):
                continue
            path = (document.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{document.name} links to {target}, which does not exist"
            assert ROOT in path.parents, f"{document.name} links outside the repository"


def test_the_readme_names_no_file_outside_the_repository() -> None:
    assert "../shared" not in (ROOT / "README.md").read_text()
