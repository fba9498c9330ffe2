"""The no-loss soak: N impressions under a mixed, seeded fault schedule (every fault kind).

    pytest hil-tests -m soak --soak-stamps 10000     # the long one, opt-in
    make test                                         # runs the short one (300 stamps)

Both end the run with exactly one line:
    soak: stamps=N faults=F lost=0 duplicates_after_dedupe=0 verified=N mqtt_redeliveries=R seed=S
"""

from __future__ import annotations

import pytest
from sealink_hil.plugin import HilSettings, record_soak_line
from sealink_hil.rig import Rig

SHORT_SOAK_STAMPS = 300

# Every test here presses the stamp: a real board needs an actuator (--press-cmd).
pytestmark = pytest.mark.needs_gpio


def _soak(rig: Rig, request: pytest.FixtureRequest, stamps: int) -> None:
    result = rig.soak(stamps)
    record_soak_line(request.config, result.line)
    rig.artifacts.path("soak.txt").write_text(result.line + "\n")
    request.node.user_properties.append(("soak", result.line))
    print(result.line)
    assert result.ok, f"{result.line}; problems: {result.problems}; {rig.where()}"
    missing = set(rig.kinds()) - set(result.by_kind)
    assert not missing, f"fault kinds never injected: {sorted(missing)}; {rig.where()}"
    assert result.faults >= stamps / 50, rig.where()


@pytest.mark.transports
@pytest.mark.timeout(900)
def test_short_soak_in_the_default_run(rig: Rig, request: pytest.FixtureRequest) -> None:
    _soak(rig, request, SHORT_SOAK_STAMPS)


@pytest.mark.soak
@pytest.mark.timeout(0)  # hours for large N; every wait inside has its own timeout
def test_soak(rig: Rig, request: pytest.FixtureRequest, hil: HilSettings) -> None:
    _soak(rig, request, hil.soak_stamps)
