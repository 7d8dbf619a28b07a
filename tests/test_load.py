"""The load test (benchmarks/load_telegram.py) as part of the suite: 200 photos from 50 people at once through the
fake Telegram server into the real `claybot run` on the tiny models, with the repository's limits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "load_telegram.py"


@pytest.fixture(scope="module")
def load_telegram():
    """The benchmark script as a module."""
    module = load_script(SCRIPT)
    yield module
    sys.modules.pop(module.__name__, None)


async def test_200_requests_from_50_people_each_get_one_clear_answer(load_telegram, tiny_config_path, tmp_path,
                                                                     capsys):
    # Two denoising steps (one at strength 0.5): the chat side is under test, not the 2 CPUs' diffusion speed.
    report = await load_telegram.run_load(tiny_config_path, tmp_path, users=50, requests=200, steps=2, timeout=420)
    with capsys.disabled():
        print("\n" + "\n".join(report.lines()))
    assert not report.problems  # nothing lost, nothing twice, nothing but a picture or a clear refusal
    assert sum(report.outcomes.values()) == 200
    assert report.outcomes["image"] >= 50  # the limits let everyone through at least once
    assert report.outcomes["image"] < 200  # and they did hold: 4 photos at once from each person is too many
    assert len(report.ack_seconds) == 200  # the chat process's peak memory and p50/p95 ack are printed above
