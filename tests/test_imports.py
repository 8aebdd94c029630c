"""Every third-party module the code imports comes from a distribution pyproject.toml declares."""

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = {"pipeline", "flows", "trainer", "tests", "benchmarks"}


def imported_modules() -> dict[str, str]:
    found = {}
    for d in OWN:
        for path in (ROOT / d).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    found.setdefault(n.split(".")[0], str(path.relative_to(ROOT)))
    return {m: p for m, p in found.items() if m not in OWN and m not in sys.stdlib_module_names}


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def owners_by_files(module: str) -> list[str]:
    """Distributions that install a top-level file or folder of this name (extension modules such as dlib's
    are not always listed in top_level metadata)."""
    return [
        d.metadata["Name"]
        for d in md.distributions()
        if any(str(f).split("/")[0].split(".")[0] == module for f in d.files or [])
    ]


def test_every_import_is_declared():
    dists = md.packages_distributions()
    names = declared()
    missing = {}
    for module, where in imported_modules().items():
        owners = {d.lower().replace("_", "-") for d in dists.get(module, []) or owners_by_files(module)}
        assert owners, f"{module} (imported in {where}) is not installed"
        if not owners & names:
            missing[module] = (sorted(owners), where)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
