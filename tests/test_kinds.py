"""Kinds of job are plug-ins: a toy third kind ("echo", tests/echo_kind.py: one core module and one engine, named in
``[pipeline] plugins``) runs through the local queue and a Redis worker with no line of the queues, lanes, journal,
codec, worker loop or flow knowing it; a kind nobody registered is refused with a clear line, never "crashed"; and
those modules name no kind of job at all."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
from pathlib import Path

import pytest
import tomlkit

import tests.echo_kind  # noqa: F401  (registers "echo" in this process, as [pipeline] plugins does)
from bot.journal import Journal, RateLimited
from bot.store import ClaybotDatabase
from pipeline.core import codec
from pipeline.core.intake import take_in
from pipeline.core.jobs import BadRequest
from pipeline.core.kinds import KINDS, by_rank, kind_of
from pipeline.core.settings import AnimateSettings
from tests.conftest import photo_bytes
from tests.echo_kind import ECHO_LIMIT
from tests.redis_server import redis_config, redis_queue, start_worker, stop_worker

ROOT = Path(__file__).resolve().parents[1]
PHOTO = photo_bytes((128, 96))
PLUGINS = ["tests.echo_kind"]
# The modules that must never branch on a kind: every kind's policy is its own (pipeline/core/kinds).
KIND_BLIND = ["pipeline/core/local.py", "pipeline/core/redis_queue.py", "pipeline/core/redis_lanes.py",
              "pipeline/core/redis_entries.py", "pipeline/core/codec.py", "pipeline/gpu/worker.py",
              "pipeline/gpu/redis_worker.py", "bot/journal.py", "bot/flow.py", "bot/admission.py"]


def _with_plugins(gpu, **update):
    return gpu.model_copy(update={"pipeline": gpu.pipeline.model_copy(update={"plugins": PLUGINS}), **update})


@pytest.fixture(scope="module")
def three_kinds(tiny_config):
    """Settings that make all three kinds: pictures, clips (9 frames at 8 fps; no model is loaded here) and echoes."""
    animate = AnimateSettings(enabled=True, frames=9, fps=8)
    return _with_plugins(tiny_config.gpu(), animate=animate)


async def test_a_third_kind_has_its_own_redis_lane_and_one_worker_serves_every_kind_and_engine(
        server, tiny_config_path, tmp_path):
    from pipeline.gpu.tiny_edit import write_tiny_edit_model

    config = redis_config(tiny_config_path, tmp_path, server.url, heartbeat=0.5, batch_window=0.0,
                          redis_prefix="kinds")
    doc = tomlkit.parse(config.read_text(encoding="utf-8"))
    doc["pipeline"]["plugins"] = PLUGINS
    likeness = doc["styles"]["likeness"]  # the second picture engine too (FLUX.2 klein, loaded on its first job)
    likeness["enabled"] = True
    likeness["edit"].update({"model": str(write_tiny_edit_model(tmp_path / "edit")), "megapixels": 0.0164})
    config.write_text(tomlkit.dumps(doc), encoding="utf-8")
    worker = start_worker(config, "echo-worker")
    queue = redis_queue(config, "chat-echo")
    await queue.start()
    try:
        async def serving() -> bool:
            return any("echo" in info.get("kinds", ()) for info in (await queue.workers()).values())
        for _ in range(1800):
            if await serving():
                break
            await asyncio.sleep(0.1)
        assert await serving(), (tmp_path / "echo-worker.log").read_text()
        handle = await queue.submit(await take_in(queue.gpu, PHOTO, kind="echo", seed=7))
        assert queue.keys.lane("echo") == "kinds:jobs:echo" and "kinds:jobs:echo" in queue.keys.lanes
        done = await handle.result(timeout=120)
        picture = await (await queue.submit(await take_in(queue.gpu, PHOTO, seed=8))).result(timeout=120)
        edit = await (await queue.submit(await take_in(queue.gpu, PHOTO, style="likeness", seed=9, options={
            "words": "as a knight"}))).result(timeout=120)
    finally:
        await queue.close()
        stop_worker(worker)
    assert done.prompt == "echo" and done.seed == 7 and (done.width, done.height) == (128, 96)
    assert picture.prompt != "echo" and picture.seed == 8  # the same worker makes pictures as before
    assert edit.style == "likeness" and edit.seed == 9 and edit.words == "as a knight" and edit.strength == 0
    assert edit.prompt.startswith("Turn this photo into a claymation") and "as a knight" in edit.prompt


async def test_a_kind_nobody_registered_is_refused_at_intake_and_when_decoded(tiny_config):
    with pytest.raises(BadRequest, match="no kind of job called 'sculpture'"):
        await take_in(tiny_config, PHOTO, kind="sculpture")
    job = await take_in(tiny_config, PHOTO, seed=5)
    header, blobs = codec.dump(job)
    forged = header.replace(b'"op":"picture"', b'"op":"sculpture"')
    with pytest.raises(codec.CodecError, match="no kind of job called 'sculpture'"):
        codec.load(forged, blobs)
    with pytest.raises(BadRequest, match="An echo has no option 'strength'"):
        await take_in(_with_plugins(tiny_config.gpu()), PHOTO, kind="echo", options={"strength": 0.5})


async def test_a_kind_declares_its_own_limits_and_the_journal_keeps_them(tiny_config, tmp_path):
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        journal = Journal(store, tiny_config.limits.model_copy(update={"user_queued": 0, "user_per_minute": 0,
                                                                       "chat_per_minute": 0}))
        for _ in range(ECHO_LIMIT):
            ticket = await journal.admit("telegram", "1", "c", "c", {}, kind="echo")
            await journal.answered(ticket, "image")
        with pytest.raises(RateLimited, match=f"You have asked for {ECHO_LIMIT} echos in the last hour"):
            await journal.admit("telegram", "1", "c", "c", {}, kind="echo")
        await journal.admit("telegram", "1", "c", "c", {})  # pictures are not over any limit


def test_kinds_run_in_their_declared_order_and_lanes_never_clash():
    assert [kind.name for kind in by_rank()] == ["picture", "echo", "clip"]
    lanes = [kind.lane_name() for kind in KINDS.values()]
    assert len(set(lanes)) == len(lanes) and kind_of("picture").lane_name() == ""


def test_the_queues_worker_loop_journal_codec_and_flow_name_no_kind():
    """No branch on a kind where every kind passes: no kind's name as a literal, no kind's class or spec."""
    kind_names = set(KINDS)
    declared = {type(kind).__name__ for kind in KINDS.values()} | {kind.spec.__name__ for kind in KINDS.values()}
    found = []
    for path in KIND_BLIND:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                    and node.value.strip("'\" ") in kind_names:
                found.append(f"{path}:{node.lineno}: {node.value!r}")
            elif isinstance(node, ast.Name | ast.alias) and (getattr(node, "id", None) or getattr(node, "name", "")) \
                    in declared | {"Kind"}:
                found.append(f"{path}:{node.lineno}: {getattr(node, 'id', None) or node.name}")
            elif isinstance(node, ast.Attribute) and node.attr in ("CLIP", "PICTURE"):
                found.append(f"{path}:{node.lineno}: .{node.attr}")
    assert found == []


def test_a_third_kind_is_no_edit_to_the_kind_blind_modules():
    """The echo kind is its own module and nothing else: none of those modules mentions it."""
    for path in KIND_BLIND:
        assert "echo" not in (ROOT / path).read_text(encoding="utf-8").lower(), path


def test_a_job_of_each_kind_carries_only_its_own_options():
    picture = dataclasses.fields(kind_of("picture").spec)
    clip = dataclasses.fields(kind_of("clip").spec)
    assert {f.name for f in picture} == {"strength", "speed", "trigger_weight", "structure_scale", "identity_scale",
                                         "words"}
    assert {f.name for f in clip} == {"frames", "fps", "hold", "time_limit", "max_bytes"}


async def test_clips_waiting_for_a_front_end_that_is_not_running_block_no_one(tiny_config, tmp_path):
    """A restart without the Discord token left Discord's clips unanswered: they wait for Discord, uncounted, and
    so do rows older than any job takes; Telegram's clips go on (hardening round 4, item 3)."""
    limits = tiny_config.limits.model_copy(update={"clips_waiting": 2, "clip_user_per_hour": 0,
                                                   "clip_chat_per_hour": 0, "user_queued": 0})
    now = [1_000_000.0]
    async with ClaybotDatabase(tmp_path / "claybot.sqlite3") as store:
        journal = Journal(store, limits, clock=lambda: now[0])
        for user in ("1", "2"):  # two Discord clips, never answered: Discord is not running after the restart
            await journal.admit("discord", user, "c", "g", {}, kind="clip")
        with pytest.raises(RateLimited, match="2 clips are already waiting"):
            await journal.admit("telegram", "3", "c", "c", {}, kind="clip")  # before: blocked for ever
        journal.platforms = frozenset({"telegram"})  # what RequestFlow.recover learns at start-up
        ticket = await journal.admit("telegram", "3", "c", "c", {}, kind="clip")
        await journal.admit("telegram", "4", "c", "c", {}, kind="clip")
        with pytest.raises(RateLimited, match="2 clips are already waiting"):  # the cap itself still holds
            await journal.admit("telegram", "5", "c", "c", {}, kind="clip")
        await journal.answered(ticket, "image")
        journal.platforms = None
        now[0] += 7 * 3600  # a day later, nothing of that is waiting any more
        await journal.admit("telegram", "6", "c", "c", {}, kind="clip")


async def test_a_clip_longer_than_animate_max_seconds_is_refused_before_anything_is_fetched(three_kinds):
    """/animate 10.7 asked 257 frames whatever [animate] said (hardening round 4, item 2): the longest a person may
    ask for is [animate] max_seconds, or the configured clip's length (here 9 frames at 8 fps)."""
    from pipeline.core.intake import settle

    with pytest.raises(BadRequest, match=r"A clip can be up to 1\.1 seconds long here, not 10\.7"):
        settle(three_kinds, kind="clip", options={"seconds": 10.7})
    longer = three_kinds.model_copy(update={"animate": three_kinds.animate.model_copy(update={"max_seconds": 3.0})})
    _, spec = settle(longer, kind="clip", options={"seconds": 2})
    assert spec.frames == 17  # 2 s at 8 fps, in the 4k+1 frames Wan makes
    with pytest.raises(BadRequest, match=r"up to 3\.0 seconds long here, not 4"):
        settle(longer, kind="clip", options={"seconds": 4})
