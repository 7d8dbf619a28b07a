"""The load test (benchmarks/load_telegram.py) as part of the suite: 80 photos from 20 people at once through the
fake Telegram server into the real `claybot run` on the tiny models, with the repository's limits. The benchmark
itself sends 200 from 50; the suite's smaller burst checks the same promises in a third of the time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

USERS, REQUESTS = 20, 80  # 4 photos at once from each person: more than the limits let through
SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "load_telegram.py"


@pytest.fixture(scope="module")
def load_telegram():
    """The benchmark script as a module."""
    module = load_script(SCRIPT)
    yield module
    sys.modules.pop(module.__name__, None)


async def test_80_requests_from_20_people_each_get_one_clear_answer(load_telegram, tiny_config_path, tmp_path,
                                                                     capsys):
    # Two denoising steps (one at strength 0.5): the chat side is under test, not the 2 CPUs' diffusion speed.
    report = await load_telegram.run_load(tiny_config_path, tmp_path, users=USERS, requests=REQUESTS, steps=2,
                                          timeout=420)
    with capsys.disabled():
        print("\n" + "\n".join(report.lines()))
    assert not report.problems  # nothing lost, nothing twice, nothing but a picture or a clear refusal
    assert sum(report.outcomes.values()) == REQUESTS
    assert report.outcomes["image"] >= USERS  # the limits let everyone through at least once
    assert report.outcomes["image"] < REQUESTS  # and they did hold: 4 photos at once from each person is too many
    assert len(report.ack_seconds) == REQUESTS  # the chat process's peak memory and p50/p95 ack are printed above
