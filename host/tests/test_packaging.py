"""What a non-editable install ships: every package of the source tree is in pyproject's list.

An editable install (the developers' and CI's venv) finds any package on disk, so a package
missing from `[tool.setuptools] packages` shows only in a real install (`make install`), where
`sealink` then fails at import: found so for sealink.approvals by test_service_unit.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]


def test_every_package_on_disk_is_in_the_installed_list() -> None:
    config = tomllib.loads((_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = set()
    for name, where in config["package-dir"].items():
        root = _ROOT / where
        top = (name,) if name else ()
        for init in root.rglob("__init__.py"):
            on_disk.add(".".join((*top, *init.parent.relative_to(root).parts)))
    on_disk = {p for p in on_disk if p and not p.startswith("tests")}
    assert on_disk - listed == set(), f"in the tree but not installed: {sorted(on_disk - listed)}"


# The extras' libraries (pyproject's optional dependencies): a gateway installed without them
# (`make install` installs none) must still import its CLI and service.
_EXTRAS_ONLY = (
    "cwt", "psycopg", "psycopg_pool", "starlette", "uvicorn", "jinja2", "argon2", "textual",
    "multipart", "itsdangerous", "playwright",
)  # fmt: skip
_WITHOUT_EXTRAS = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed here)")
sys.meta_path.insert(0, Blocked())
import sealink.gateway.service
from sealink.cli.main import build_parser
build_parser()
"""


def test_the_cli_and_the_service_import_without_the_extras() -> None:
    script = f"BLOCKED = {set(_EXTRAS_ONLY)!r}\n{_WITHOUT_EXTRAS}"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=_ROOT
    )
    assert done.returncode == 0, done.stderr
