"""What a non-editable install ships: every package of the source tree is in pyproject's list.

An editable install (the developers' and CI's venv) finds any package on disk, so a package
missing from `[tool.setuptools] packages` shows only in a real install (`make install`), where
`sealink` then fails at import: found so for sealink.approvals by test_service_unit.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]


def test_every_package_on_disk_is_in_the_installed_list() -> None:
    config = tomllib.loads((_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = set()
    for name, where in config["package-dir"].items():
        root = _ROOT / where
        top = name or None
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            if top is None:
                on_disk.add(".".join(parts))
            else:
                on_disk.add(".".join((top, *parts)))
    on_disk = {p for p in on_disk if p and not p.startswith("tests")}
    assert on_disk - listed == set(), f"in the tree but not installed: {sorted(on_disk - listed)}"
