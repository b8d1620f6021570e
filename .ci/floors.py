"""Print a pip constraints file that pins every direct dependency of the project (and of
the extras named as arguments) to its floor: `name==floor` from `name>=floor`. CI installs
with it, so each floor pyproject.toml states is a tested fact. A dependency without a
floor is an error: its lowest version is whatever was first published. Two extras may
need one package at different floors (pyarrow: 15 for tables, 18 with pyiceberg): the
higher one holds when both are installed. `--only EXTRA…`: the extras' packages alone
(the core left to the resolver)."""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
extras = sys.argv[1:]
only = extras[:1] == ["--only"]
wanted = [] if only else list(project["dependencies"])
for extra in extras[1:] if only else extras:
    wanted += project["optional-dependencies"][extra]
floors: dict[str, str] = {}
for requirement in wanted:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    if name[0] == project["name"]:
        continue  # an extra naming others of this project's extras
    floor = re.search(r">=\s*([0-9][^,;\s]*)", requirement)
    if floor is None:
        sys.exit(f"{requirement}: no floor (name>=version) in pyproject.toml")
    key = name[0].lower().replace("_", "-")
    floors[key] = max(floors.get(key, floor[1]), floor[1],
                      key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)))
print("\n".join(f"{name}=={floor}" for name, floor in sorted(floors.items())))
