"""Print a pip constraints file that pins every direct dependency of the project (and of
the extras named as arguments) to its floor: `name==floor` from `name>=floor`. CI installs
with it, so each floor pyproject.toml states is a tested fact. A dependency without a
floor is an error: its lowest version is whatever was first published."""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
wanted = list(project["dependencies"])
for extra in sys.argv[1:]:
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
    if floors.get(key, floor[1]) != floor[1]:
        sys.exit(f"{key}: two floors, {floors[key]} and {floor[1]}")
    floors[key] = floor[1]
print("\n".join(f"{name}=={floor}" for name, floor in sorted(floors.items())))
