"""Loads the sealink HIL plugin for this folder.

`pytest_plugins` is only honoured in a rootdir conftest, and the suite must also load when
pytest starts from the repository root (`make test`), so the plugin is imported from here.
"""

from __future__ import annotations

import sys

import pytest


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # Registering the plugin here replays its own pytest_addoption (a historic hook).
    pluginmanager.import_plugin("sealink_hil.plugin")
    # Test folders elsewhere do `from conftest import ...`; loaded last from the testpaths, this
    # file would be the "conftest" they get. pytest keeps its own reference to it.
    if getattr(sys.modules.get("conftest"), "__file__", None) == __file__:
        del sys.modules["conftest"]
