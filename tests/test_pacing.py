"""The one pacer of status edits (bot/pacing.py): per chat, the first line at once, the latest line winning."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.pacing import StatusPacer

pytestmark = pytest.mark.asyncio

INTERVAL = 0.2


class Screen:
    """A status line as a chat shows it: every text sent, with when it arrived."""

    def __init__(self, *, slow: float = 0.0, fail: bool = False) -> None:
        self.shown: list[tuple[str, float]] = []
        self.slow, self.fail = slow, fail
        self.sending = asyncio.Event()
        self.changed = asyncio.Condition()

    async def show(self, text: str) -> None:
        self.sending.set()
        await asyncio.sleep(self.slow)
        if self.fail:
            raise RuntimeError("message to edit not found")
        async with self.changed:
            self.shown.append((text, time.monotonic()))
            self.changed.notify_all()

    async def until(self, text: str) -> None:
        """Wait until ``text`` is shown."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: text in self.texts()), 10)

    def texts(self) -> list[str]:
        return [text for text, _ in self.shown]


async def test_the_first_line_goes_out_at_once_and_superseded_lines_never_go_out():
    pacer, screen = StatusPacer({"telegram": INTERVAL}), Screen()
    line = pacer.line(("telegram", "1"), screen.show)
    await line.show("Queued, #2.")
    assert screen.texts() == ["Queued, #2."]  # shown before show() returned
    for step in range(10):
        await line.show(f"Sculpting… {step * 10}%")
    await screen.until("Sculpting… 90%")
    assert screen.texts() == ["Queued, #2.", "Sculpting… 90%"]  # the latest, once; 0%–80% never
    assert screen.shown[1][1] - screen.shown[0][1] >= INTERVAL * 0.9


async def test_two_requests_in_one_chat_share_its_pace_and_other_chats_do_not_wait():
    pacer = StatusPacer({"telegram": INTERVAL, "discord": 60.0})
    first, second, elsewhere = Screen(), Screen(), Screen()
    a = pacer.line(("telegram", "group"), first.show)
    b = pacer.line(("telegram", "group"), second.show)
    c = pacer.line(("discord", "group"), elsewhere.show)  # the same id on another platform is another chat
    for line in (a, b, c):
        await line.show("Queued.")  # every first line at once, whatever the pace
    assert [s.texts() for s in (first, second, elsewhere)] == [["Queued."]] * 3
    await a.show("Sculpting… 10%")
    await b.show("Sculpting… 20%")
    await first.until("Sculpting… 10%")
    await second.until("Sculpting… 20%")
    assert abs(first.shown[1][1] - second.shown[1][1]) >= INTERVAL * 0.9  # one edit per interval in the chat


async def test_close_drops_a_waiting_edit_and_lets_one_on_its_way_land_first():
    pacer, screen, later = StatusPacer({"telegram": INTERVAL}), Screen(), Screen()
    line = pacer.line(("telegram", "1"), screen.show)
    await line.show("Queued.")
    await line.show("Sculpting…")  # waits for its turn
    await line.close()
    # another request's edit in the same chat takes a later turn: once it is shown, the dropped one would have been
    other = pacer.line(("telegram", "1"), later.show)
    await other.show("Queued, #2.")
    await other.show("Queued, #1.")
    await later.until("Queued, #1.")
    assert screen.texts() == ["Queued."]

    slow = Screen(slow=INTERVAL)
    line = pacer.line(("telegram", "2"), slow.show)
    await line.show("Queued.")
    slow.sending.clear()
    await line.show("Sculpting…")
    await asyncio.wait_for(slow.sending.wait(), 10)  # the edit is on its way
    await line.close()
    assert slow.texts() == ["Queued.", "Sculpting…"]  # landed before close returned: never after the answer


async def test_a_failing_edit_loses_nothing_and_the_line_goes_on():
    pacer, screen = StatusPacer({"telegram": INTERVAL}), Screen(fail=True)
    line = pacer.line(("telegram", "1"), screen.show)
    await line.show("Queued.")  # raises inside: logged, not raised
    screen.fail = False
    await line.show("Sculpting…")
    await screen.until("Sculpting…")
    await line.last_turn()  # an error may now replace the line, at the chat's pace
