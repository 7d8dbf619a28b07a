"""The SQLite settings store: typed values per scope, persistent, cached, safe from concurrent tasks."""

from __future__ import annotations

import asyncio
import os
import sqlite3

import pytest

from bot.config import BotSettings
from bot.store import STORE_FILE, ClaybotDatabase, StoreError, store_path


async def test_values_keep_their_types_and_missing_ones_give_the_default(tmp_path):
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        await store.set("discord:guild:1", "reactions", False)
        await store.set("discord:guild:1", "default_strength", 0.3)
        await store.set("discord:guild:1", "reaction_emoji", "🏺")
        await store.set("discord:guild:1", "channels", [10, 20])
        await store.set("discord:guild:1", "limit", 5)

        assert await store.get_bool("discord:guild:1", "reactions", True) is False
        assert await store.get_float("discord:guild:1", "default_strength", None) == 0.3
        assert await store.get_str("discord:guild:1", "reaction_emoji", "x") == "🏺"
        assert await store.get_list("discord:guild:1", "channels") == [10, 20]
        assert await store.get_int("discord:guild:1", "limit", 0) == 5
        assert await store.get_float("discord:guild:1", "limit", None) == 5.0  # a whole number is a number too
        assert await store.get_bool("discord:guild:2", "reactions", True) is True
        assert await store.get_float("discord:guild:2", "default_strength", None) is None
        assert await store.get_list("discord:guild:2", "channels") == []


async def test_a_value_of_the_wrong_type_gives_the_default_and_a_warning(tmp_path, caplog):
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        await store.set("chat", "reactions", "yes")
        await store.set("chat", "strength", True)
        assert await store.get_bool("chat", "reactions", True) is True
        assert await store.get_float("chat", "strength", 0.5) == 0.5  # a bool is not a number here
        assert await store.get_int("chat", "strength", 3) == 3
    assert "chat/reactions has an unexpected type" in caplog.text


async def test_settings_survive_a_reopen_and_scopes_stay_apart(tmp_path):
    path = tmp_path / "data" / "claybot.sqlite3"
    async with ClaybotDatabase(path) as store:
        await store.set("discord:guild:1", "reactions", False)
        await store.set("telegram:chat:-100", "reactions", True)
    async with ClaybotDatabase(path) as store:
        assert await store.scope("discord:guild:1") == {"reactions": False}
        assert await store.scope("telegram:chat:-100") == {"reactions": True}
        assert await store.scope("discord:guild:2") == {}


async def test_none_delete_and_clear_bring_back_the_defaults(tmp_path):
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        for key in ("a", "b", "c"):
            await store.set("g", key, 1)
        await store.set("g", "a", None)
        await store.delete("g", "b")
        assert await store.scope("g") == {"c": 1}
        await store.clear("g")
        assert await store.scope("g") == {}
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        assert await store.scope("g") == {}


async def test_a_changed_value_is_read_back_at_once_and_the_cache_cannot_be_changed_from_outside(tmp_path):
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        assert await store.get_list("g", "channels") == []  # the scope is now cached
        await store.set("g", "channels", (1, 2))
        channels = await store.get_list("g", "channels")
        assert channels == [1, 2]
        channels.append(3)
        (await store.scope("g"))["channels"] = "changed"
        assert await store.get_list("g", "channels") == [1, 2]


async def test_concurrent_writes_and_first_reads_lose_nothing(tmp_path):
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        await asyncio.gather(*(store.set("g", f"k{i}", i) for i in range(50)),
                             *(store.get("g", f"k{i}") for i in range(50)))
        assert await store.scope("g") == {f"k{i}": i for i in range(50)}
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        assert len(await store.scope("g")) == 50


async def test_the_event_loop_keeps_running_while_sqlite_works(tmp_path):
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        for i in range(20):
            await store.set("g", "k", i)
        ticker.cancel()
        assert ticks > 20  # every write ran in a thread while the loop went on


async def test_an_unusable_path_and_a_closed_store_say_so(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="cannot open the settings database"):
        await ClaybotDatabase(tmp_path / "file" / "claybot.sqlite3").open()
    store = ClaybotDatabase(tmp_path / "s.sqlite3")
    with pytest.raises(StoreError, match="not open"):
        await store.get("g", "k")


async def test_the_file_lives_in_the_data_dir_and_is_plain_sqlite(tmp_path):
    path = store_path(BotSettings(data_dir=str(tmp_path / "data")))
    assert path == tmp_path / "data" / STORE_FILE
    async with ClaybotDatabase(path) as store:
        await store.set("discord:guild:1", "reaction_emoji", "🏺")
    rows = sqlite3.connect(path).execute("SELECT scope, key, value FROM settings").fetchall()
    assert rows == [("discord:guild:1", "reaction_emoji", '"🏺"')]


async def test_the_journal_gives_back_the_same_settled_job_and_refuses_a_damaged_one(tmp_path, caplog):
    # After a restart the local backend runs the journal's job again: the same seed, working size and options.
    from bot.config import LimitSettings
    from bot.journal import Journal
    from pipeline.core.jobs import Job
    from pipeline.core.kinds import PictureSpec

    job = Job(b"\xff\xd8 photo", "clay", 424242, (832, 640), PictureSpec(0.6, "fast", 1.5, 0.8, 0.6),
              max_rating="general", reply_to=("telegram", "-100"))
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        journal = Journal(store, LimitSettings())
        kept = await journal.admit("telegram", "1", "-100", "-100", {"message_id": 5})
        await journal.queued(kept, "abc", job)
        damaged = await journal.admit("telegram", "2", "-100", "-100", {"message_id": 6})
        await journal.queued(damaged, "def", job)
        await store.run(lambda db: db.execute("UPDATE jobs SET request = '{\"op\": \"job\"}' WHERE ticket = ?",
                                              (damaged,)))
        first, second = await journal.unanswered()
    assert (first.job_id, first.job) == ("abc", job)
    assert second.job is None  # answered as lost in the restart, never run as something else
    assert "holds no job claybot can run" in caplog.text


async def test_a_job_the_journal_kept_is_run_again_after_a_restart_and_answered_with_its_photo(tmp_path):
    # The local backend loses its queue with the process: the restarted one submits the journal's job again and
    # answers in the chat it came from, replying to the message it was asked in, with the photo it was made from.
    from bot.cli import ROOT_CONFIG
    from bot.config import load_config
    from bot.flow import RequestFlow, caption
    from pipeline.core.jobs import Done, Job, JobHandle
    from pipeline.core.kinds import PictureSpec

    job = Job(b"\xff\xd8 photo", "clay", 7, (832, 640), PictureSpec(0.6, "default", 1.5, 0.8, 0.6),
              reply_to=("telegram", "-100"))
    done = Done(b"\x89PNG result", 832, 640, ["a cat"], "a cat, clay", 7, "clay", 0.6)

    class RestartedQueue:  # an empty queue, as a restarted local backend's is: it runs what it is given
        def __init__(self) -> None:
            self.submitted: list[Job] = []

        async def submit(self, job: Job) -> JobHandle:
            self.submitted.append(job)
            handle = JobHandle("again", job)
            handle.push(done)
            return handle

    class Chat:
        name = "telegram"

        def __init__(self) -> None:
            self.delivered: list[tuple] = []

        async def deliver(self, chat_id, done, text, answer_to, source=None) -> None:
            self.delivered.append((chat_id, done, text, answer_to, source))

    config = load_config(ROOT_CONFIG, check_models=False)
    queue, chat = RestartedQueue(), Chat()
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        before = RequestFlow(queue, config, store=store)
        ticket = await before.journal.admit("telegram", "1", "-100", "-100", {"message_id": 5})
        await before.journal.queued(ticket, "lost-with-the-process", job)
        after = RequestFlow(queue, config, store=store)
        assert await after.recover({"telegram": chat}, await after.unanswered()) == 1
        await asyncio.gather(*after.recovering.tasks)
        assert await after.unanswered() == []  # answered in the journal too
    assert queue.submitted == [job]
    assert chat.delivered == [("-100", done, caption(done), {"message_id": 5}, job.image)]


async def test_settings_looked_up_by_a_burst_need_no_trip_to_the_file(tmp_path, monkeypatch):
    # A burst of requests from many chats all look up their settings together: every setting was read when the
    # database opened, so none of them waits for the database thread (a chat with no settings has the defaults).
    path = tmp_path / "s.sqlite3"
    async with ClaybotDatabase(path) as store:
        await store.set("telegram:chat:1", "nsfw", True)
    async with ClaybotDatabase(path) as store:
        reads = []
        query = store._query
        monkeypatch.setattr(store, "_query", lambda sql, params: reads.append(sql) or query(sql, params))
        values = await asyncio.gather(*(store.get_bool(f"telegram:chat:{1 + i % 2}", "nsfw", False)
                                        for i in range(50)))
        assert values == [True, False] * 25
        assert reads == []
        await store.set("telegram:chat:2", "nsfw", True)  # a scope that had nothing stored
        assert await store.get_bool("telegram:chat:2", "nsfw", False)


async def test_database_work_asked_for_together_shares_trips_to_its_thread_and_keeps_its_order(tmp_path):
    # 200 admissions at once must not make 200 trips (each wakes a thread and the event loop); each still gets
    # its own result or its own error, in the order asked.
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        trips = []
        run_trip = store._run_trip
        store._run_trip = lambda works: trips.append(len(works)) or run_trip(works)
        await store.run(lambda db: db.execute("CREATE TABLE seen (n INTEGER)"))
        trips.clear()

        def work(n: int):
            def insert(db):
                if n == 7:
                    db.execute("INSERT INTO no_such_table VALUES (1)")
                if n == 8:
                    raise ValueError("eight")
                db.execute("INSERT INTO seen VALUES (?)", (n,))
                return n
            return insert

        outcomes = await asyncio.gather(*(store.run(work(n)) for n in range(200)), return_exceptions=True)
        assert [o for o in outcomes if isinstance(o, int)] == [n for n in range(200) if n not in (7, 8)]
        assert isinstance(outcomes[7], StoreError) and "no_such_table" in str(outcomes[7])
        assert isinstance(outcomes[8], ValueError)
        assert sum(trips) == 200 and len(trips) <= 3, trips
        rows = await store.run(lambda db: db.execute("SELECT n FROM seen").fetchall())
        assert [n for (n,) in rows] == [n for n in range(200) if n not in (7, 8)]


async def test_photos_dropped_from_the_journal_give_their_room_back_to_the_disk(tmp_path):
    # A raid's photos pass through the journal; once answered, the file must not stay at the raid's size.
    from bot.config import LimitSettings
    from bot.journal import Journal
    from pipeline.core.jobs import Job
    from pipeline.core.kinds import PictureSpec

    path = tmp_path / "claybot.sqlite3"
    async with ClaybotDatabase(path) as store:
        journal = Journal(store, LimitSettings(user_per_minute=0, user_per_hour=0, chat_per_minute=0,
                                               chat_per_hour=0, user_queued=0))
        tickets = []
        for i in range(40):
            ticket = await journal.admit("telegram", str(i), "-100", "-100", {})
            await journal.queued(ticket, f"job{i}", Job(os.urandom(2**20), "clay", i, (128, 128),
                                                          PictureSpec(0.5, "default", 2.0, 0.8, 0.6),
                                                          reply_to=("telegram", "-100")))
            tickets.append(ticket)
        assert on_disk(path) > 40 * 2**20  # the photos are kept until answered (a restart would need them)
        for ticket in tickets:
            await journal.answered(ticket, "image")
        assert on_disk(path) < 12 * 2**20
        assert len(await journal.usage(0)) == 1  # the rows themselves stay (the limits' windows count them)


def on_disk(path) -> int:
    """The database's bytes on disk: the file and its write-ahead log."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


async def test_a_database_from_before_is_converted_once_so_it_can_shrink(tmp_path):
    path = tmp_path / "claybot.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE settings (scope TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
                "updated_at REAL NOT NULL, PRIMARY KEY (scope, key))")
    old.execute("INSERT INTO settings VALUES ('g', 'k', '1', 0)")
    old.commit()
    assert old.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    old.close()
    async with ClaybotDatabase(path) as store:
        assert await store.get_int("g", "k", 0) == 1
    assert sqlite3.connect(path).execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental


async def test_a_caller_that_gives_up_on_its_database_work_does_not_stall_the_others(tmp_path):
    # A request cancelled (its chat process closing, a time-out) while its work waits for the thread: the others
    # in the same trip still get their results, and the database keeps serving.
    async with ClaybotDatabase(tmp_path / "s.sqlite3") as store:
        callers = [asyncio.create_task(store.run(lambda db: db.execute("SELECT 1").fetchone()[0]))
                   for _ in range(10)]
        await asyncio.sleep(0)  # every caller has asked
        callers[3].cancel()
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert isinstance(outcomes[3], asyncio.CancelledError)
        assert [o for i, o in enumerate(outcomes) if i != 3] == [1] * 9
        assert await store.run(lambda db: db.execute("SELECT 2").fetchone()[0]) == 2
