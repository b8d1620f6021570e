"""The README's commands are the ones CI runs, so the first screen never goes stale."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
        assert targets or document.name != "README.md", "the link pattern is broken"
        for target in targets:
            if re.match(r"^[a-z]+://|^mailto:|^#", target):
                continue
            path = (document.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{document.name} links to {target}, which does not exist"
            assert ROOT in path.parents, f"{document.name} links outside the repository"


def test_the_readme_names_no_file_outside_the_repository() -> None:
    assert "../shared" not in (ROOT / "README.md").read_text()


def _quick_start() -> tuple[list[list[str]], str]:
    """The Quick start's `backfill` command lines, and its SQL."""
    import shlex

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = [line for block in shell_blocks(section) for line in block.splitlines()
             if line.startswith("backfill ")]
    sql = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    assert lines and len(sql) == 1, "the README's quick start has changed shape"
    return [shlex.split(line, comments=True) for line in lines], sql[0]


@pytest.mark.anyio
async def test_the_quick_start_runs_as_written(data_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import duckdb

    from backfill.clock import wall_now
    from backfill.emulator import EmulatorConfig, serve
    from backfill.keys import BEIJING
    from tests.helpers import cli, env_for, set_clock

    # At noon, Beijing time: yesterday is exportable (at 01:00 it would not be yet).
    set_clock(monkeypatch, wall_now().astimezone(BEIJING).replace(hour=12, minute=0))
    commands, sql = _quick_start()
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=1024)
    async with serve(config) as emulator:
        env = env_for(emulator.url)
        for args in commands:
            code, _, err = await cli(args[1:], env, tmp_path)
            # Exit 1 only for keys gone at GrowingIO (the quick start's two weeks reach
            # the edge of the 15 days); 4 for hours not ready yet.
            assert code in (0, 4), (args, code, err)
    connection = duckdb.connect()
    try:
        rows = connection.sql(sql.replace("'data/", f"'{tmp_path}/data/")).fetchall()
    finally:
        connection.close()
    expected = len({p.parent.name for p in (tmp_path / "data" / "visit").rglob("_SUCCESS")})
    assert len(rows) == expected == 14 and all(count > 0 for _, count in rows)


def _ci_recipe() -> tuple[str, dict[str, str]]:
    """The README's GitHub Actions job: the catch-up step's script and its environment."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Use it from CI", 1)[1].split("\n### ", 1)[0]
    yaml = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    assert len(yaml) == 1, "the README's CI recipe has changed shape"
    step = yaml[0].split("- name: catch up", 1)[1]
    env_block = step.split("env:", 1)[1].split("run: |", 1)[0]
    env = dict(re.findall(r"^\s+(\w+): (.+)$", env_block, flags=re.M))
    lines = step.split("run: |", 1)[1].splitlines()[1:]
    indent = len(lines[0]) - len(lines[0].lstrip())
    return "\n".join(line[indent:] for line in lines if line.strip()), env


@pytest.mark.anyio
async def test_the_ci_recipe_runs_as_written_on_an_empty_bucket(
        data_dir: Path, tmp_path: Path, bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catch-up step, run by bash as the README writes it, on a runner that has
    nothing: no state, an empty bucket. GrowingIO keeps one day here (a config file says
    so, as a project's would), so its first run is the backfill of that day's hours."""
    import json
    import os
    import subprocess
    import sys

    import anyio

    from backfill.clock import wall_now
    from backfill.emulator import EmulatorConfig, serve
    from backfill.keys import BEIJING
    from tests.helpers import env_for, set_clock

    set_clock(monkeypatch, wall_now().astimezone(BEIJING).replace(hour=9, minute=30))
    script, step_env = _ci_recipe()
    target = re.search(r"s3://([a-z0-9.-]+)/", script)
    assert target is not None and "catchup" in script
    bucket.client.create_bucket(Bucket=target[1])
    (tmp_path / "backfill.toml").write_text("retention_days = 1\n")
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=1024,
                            retention_days=1, rate_limit=2)
    async with serve(config) as emulator:
        env = {**env_for(emulator.url), **bucket.env(),
               "AWS_REGION": step_env["AWS_REGION"],
               "XDG_STATE_HOME": str(tmp_path / "state"),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        done = await anyio.run_process(["bash", "-c", script], env=env, cwd=tmp_path,
                                       check=False, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
        stats = emulator.state.stats()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["exit_code"] in (0, 4)
    assert report["keys"]["done"] >= 9  # yesterday's and today's ready hours at least
    assert report["keys"]["failed"] == report["keys"]["gone"] == 0
    assert stats["export_calls"] >= report["keys"]["done"]


def _install_lines() -> list[tuple[str, str]]:
    """Every ``pip install`` of this project in the README, the docs and the example
    config: (where, the line from ``pip install`` on)."""
    found = []
    for document in [ROOT / "README.md", ROOT / "config.example.toml",
                     *sorted((ROOT / "docs").glob("*.md"))]:
        for match in re.finditer(r"pip install[^`\n;&|)]*", document.read_text()):
            line = match[0].strip()
            if re.search(r"growingio-backfill|\s\.(\s|$)|'\.\[|-e \.", line):
                found.append((document.name, line))
    return found


def test_every_install_line_installs_from_the_clone_with_extras_that_exist() -> None:
    """Nothing is on the package index yet: every line installs the clone it is read in,
    and names only extras the project declares."""
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"])
    lines = _install_lines()
    assert len(lines) >= 8, "the install-line pattern is broken"
    for where, line in lines:
        assert "growingio-backfill" not in line, f"{where}: {line} (not on the index yet)"
        form = re.fullmatch(r"pip install (?:-U pip && pip install )?(?:-e )?"
                            r"(?:\.|'\.\[([a-z,]+)\]')(?: --group dev)?", line)
        assert form, f"{where}: {line} is not an install from the clone"
        assert set((form[1] or "").split(",")) - {""} <= declared, f"{where}: {line}"


def test_the_line_a_missing_extra_gives_works_here(tmp_path: Path) -> None:
    """The line a missing extra's message gives, as this environment was installed: pip
    resolves it as written (a dry run, nothing installed)."""
    import shlex
    import subprocess
    import sys

    line = subprocess.run([sys.executable, "-c", "from backfill.install import install_line;"
                           "print(install_line('aws'))"], cwd=tmp_path, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()
    words = shlex.split(line)
    assert words[:2] == ["pip", "install"], line
    # --force-reinstall: the copy installed from that very wheel would otherwise be
    # "already installed", and the dry run would name nothing.
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                           "--force-reinstall", *words[2:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Would install growingio-backfill" in done.stdout, done.stdout[-2000:]
