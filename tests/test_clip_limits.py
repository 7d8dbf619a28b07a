"""Clips' own limits in the journal: per person and per chat per hour, and clips waiting at once (they cost tens of
times a picture), on top of the limits every request counts toward."""

from __future__ import annotations

import sqlite3

import pytest

from bot.config import LimitSettings
from bot.journal import Journal, RateLimited
from bot.store import ClaybotDatabase

NOW = 1_800_000_000.0
NO_LIMITS = {"user_per_minute": 0, "user_per_hour": 0, "chat_per_minute": 0, "chat_per_hour": 0, "user_queued": 0,
             "clip_user_per_hour": 0, "clip_chat_per_hour": 0, "clips_waiting": 0}


async def journal_with(tmp_path, clock=lambda: NOW, **limits) -> tuple[ClaybotDatabase, Journal]:
    store = ClaybotDatabase(tmp_path / "claybot.sqlite3")
    await store.open()
    return store, Journal(store, LimitSettings(**{**NO_LIMITS, **limits}), clock=clock)


async def ask(journal: Journal, user: str, chat: str = "-100", kind: str = "clip", answer: str | None = "image"):
    ticket = await journal.admit("telegram", user, chat, chat, {}, kind=kind)
    if answer is not None:
        await journal.answered(ticket, answer)
    return ticket


async def test_a_person_over_the_clips_per_hour_is_refused_a_clip_but_still_gets_pictures(tmp_path):
    now = [NOW]
    store, journal = await journal_with(tmp_path, clock=lambda: now[0], clip_user_per_hour=2)
    try:
        await ask(journal, "1")
        await ask(journal, "1")
        now[0] += 600
        with pytest.raises(RateLimited, match="You have asked for 2 clips in the last hour; please ask again in "
                                              "50 minutes") as refused:
            await ask(journal, "1")
        assert refused.value.retry_after == pytest.approx(3000)
        await ask(journal, "1", kind="picture")  # pictures have their own, looser limits
        await ask(journal, "2")  # someone else is not held back
        now[0] += 3001
        await ask(journal, "1")  # the hour is over
    finally:
        await store.close()


async def test_a_limit_of_one_clip_says_so_in_the_singular(tmp_path):
    store, journal = await journal_with(tmp_path, clip_user_per_hour=1)
    try:
        await ask(journal, "1")
        with pytest.raises(RateLimited, match="You have asked for 1 clip in the last hour;"):
            await ask(journal, "1")
    finally:
        await store.close()


async def test_a_chat_over_its_clips_per_hour_is_refused_a_clip(tmp_path):
    store, journal = await journal_with(tmp_path, clip_chat_per_hour=3)
    try:
        for user in ("1", "2", "3"):
            await ask(journal, user)
        with pytest.raises(RateLimited, match="People here have asked for 3 clips in the last hour"):
            await ask(journal, "4")
        await ask(journal, "4", chat="-200")  # another chat has its own count
        await ask(journal, "4", kind="picture")
    finally:
        await store.close()


async def test_clips_waiting_at_once_are_capped_for_everyone_and_the_cap_frees_as_they_are_answered(tmp_path):
    store, journal = await journal_with(tmp_path, clips_waiting=2)
    try:
        first = await ask(journal, "1", answer=None)
        await ask(journal, "2", chat="-200", answer=None)
        with pytest.raises(RateLimited, match=r"2 clips are already waiting or being made \(the most at once is 2\)"):
            await ask(journal, "3", chat="-300")
        await ask(journal, "3", chat="-300", kind="picture", answer=None)  # pictures are not held up by clips
        await journal.answered(first, "image")
        await ask(journal, "3", chat="-300")
    finally:
        await store.close()


async def test_a_clip_counts_toward_the_limits_every_request_counts_toward(tmp_path):
    store, journal = await journal_with(tmp_path, user_per_minute=2)
    try:
        await ask(journal, "1", kind="picture")
        await ask(journal, "1")
        with pytest.raises(RateLimited, match="You have asked for 2 pictures in the last minute"):
            await ask(journal, "1", kind="picture")
        with pytest.raises(RateLimited, match="in the last minute"):
            await ask(journal, "1")
    finally:
        await store.close()


async def test_a_database_from_before_clips_gets_the_kind_column_and_its_rows_count_as_pictures(tmp_path):
    path = tmp_path / "claybot.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE jobs (ticket INTEGER PRIMARY KEY AUTOINCREMENT, platform TEXT NOT NULL, "
                "user_id TEXT NOT NULL, chat_id TEXT NOT NULL, group_id TEXT NOT NULL, origin TEXT, "
                "answer_to TEXT NOT NULL, accepted_at REAL NOT NULL, state TEXT NOT NULL, job_id TEXT, request TEXT, "
                "image BLOB, attempts INTEGER NOT NULL DEFAULT 0, outcome TEXT, answered_at REAL)")
    old.execute("INSERT INTO jobs (platform, user_id, chat_id, group_id, answer_to, accepted_at, state) "
                "VALUES ('telegram', '1', '-100', '-100', '{}', ?, 'reserved')", (NOW - 10,))
    old.commit()
    old.close()
    store, journal = await journal_with(tmp_path, clips_waiting=1, clip_user_per_hour=1)
    try:
        await ask(journal, "1")  # the old unanswered row is a picture: no clip is waiting
        with pytest.raises(RateLimited, match="You have asked for 1 clip in the last hour"):
            await ask(journal, "1")
        assert [entry.user_id for entry in await journal.unanswered()] == ["1"]
    finally:
        await store.close()
