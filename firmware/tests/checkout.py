"""The checkout these tests belong to, put on sys.path so that `tools` imports as a package.

pytest puts only this folder on sys.path (there is no conftest.py here: host/ and hil-tests/ have
their own, and `from conftest import` would pick whichever came first). Import this module
before `tools`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
