"""Job ids on every log line (text and JSON) and the Prometheus /metrics endpoint, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from bot.observability import (
    JOB_ID,
    JobIdFilter,
    Metrics,
    hide_secret,
    is_loopback,
    job_context,
    serve_metrics,
    setup_logging,
)

# ---------------------------------------------------------------------------------------------------------------------
# Logs


@pytest.fixture
def log_stream():
    """Where setup_logging writes during the test; the root logger's handlers and level are put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield io.StringIO()
    for handler in list(root.handlers):
        if any(isinstance(f, JobIdFilter) for f in handler.filters):
            root.removeHandler(handler)
    for handler in handlers:
        # pytest adds and removes its own capture handler around each test phase: the setup phase's one is gone.
        if handler not in root.handlers and type(handler).__name__ != "LogCaptureHandler":
            root.addHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_lines_carry_the_job_id_from_any_logger(log_stream):
    setup_logging(logging.INFO, "text", stream=log_stream)
    with job_context("abc123"):
        logging.getLogger("some.lib").info("inside")
    logging.getLogger("some.lib").info("outside")

    inside, outside = lines(log_stream)
    assert inside.endswith(" INFO some.lib [abc123]: inside")
    assert outside.endswith(" INFO some.lib [-]: outside")


def test_json_lines_carry_the_job_id_and_named_fields(log_stream):
    setup_logging(logging.INFO, "json", stream=log_stream)
    with job_context("abc123"):
        logging.getLogger("some.lib").warning("inside %d", 1)
    logging.getLogger("other").info("outside")

    inside, outside = (json.loads(line) for line in lines(log_stream))
    assert inside["job_id"] == "abc123"
    assert inside["message"] == "inside 1"
    assert inside["level"] == "WARNING"
    assert inside["logger"] == "some.lib"
    assert inside["timestamp"].startswith(time.strftime("%Y-", time.gmtime()))
    assert "exc_info" not in inside
    assert outside.get("job_id") is None
    assert outside["message"] == "outside"


def test_json_line_includes_the_traceback(log_stream):
    setup_logging(logging.INFO, "json", stream=log_stream)
    with job_context("j1"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("x").exception("failed")

    (record,) = (json.loads(line) for line in lines(log_stream))
    assert record["job_id"] == "j1"
    assert "RuntimeError: boom" in record["exc_info"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_registered_token_is_hidden_from_every_logger_and_traceback(log_stream, fmt):
    secret = "not-shaped-like-a-token-but-secret"
    hide_secret(secret)
    setup_logging(logging.INFO, fmt, stream=log_stream)
    try:
        raise RuntimeError(f"GET https://example.invalid/bot{secret}/getFile failed")
    except RuntimeError:
        logging.getLogger("any.library").exception("request with %s failed", secret)
    logging.getLogger("other").info("polling https://api.telegram.org/bot123456:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/x")
    text = log_stream.getvalue()
    assert secret not in text and "AAAAAAAAAAAAAAAAAAAA" not in text
    assert text.count("<token>") == 3  # in the message, in the traceback's error line, in the URL
    assert "RuntimeError" in text  # the traceback itself is kept


def test_explicit_job_id_in_extra_wins(log_stream):
    setup_logging(logging.INFO, "text", stream=log_stream)
    with job_context("ctx"):
        logging.getLogger("a").info("hi", extra={"job_id": "x"})
    assert lines(log_stream)[0].endswith("[x]: hi")


def test_level_filters_lines(log_stream):
    setup_logging(logging.WARNING, "text", stream=log_stream)
    logging.getLogger("a").info("quiet")
    logging.getLogger("a").warning("loud")
    assert [line.rsplit(": ", 1)[1] for line in lines(log_stream)] == ["loud"]


def test_job_context_resets_after_the_block():
    assert JOB_ID.get() is None
    with job_context("outer"):
        with job_context("inner"):
            assert JOB_ID.get() == "inner"
        assert JOB_ID.get() == "outer"
    assert JOB_ID.get() is None


async def test_concurrent_tasks_each_log_their_own_job_id(log_stream):
    setup_logging(logging.INFO, "json", stream=log_stream)
    log = logging.getLogger("claybot.test")

    async def job(job_id: str) -> None:
        with job_context(job_id):
            for step in range(5):
                log.info("%s step %d", job_id, step)
                await asyncio.sleep(0)  # let the other task log in between

    await asyncio.gather(job("job-a"), job("job-b"))
    records = [json.loads(line) for line in lines(log_stream)]
    assert len(records) == 10
    assert [r["job_id"] for r in records[:4]] == ["job-a", "job-b", "job-a", "job-b"]  # they did interleave
    for record in records:
        assert record["message"].startswith(record["job_id"] + " ")


def test_unknown_log_format_is_refused(log_stream):
    with pytest.raises(ValueError, match="'text', 'json'"):
        setup_logging(logging.INFO, "yaml", stream=log_stream)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


SNAPSHOT = {"backend": "redis", "waiting": 3, "running": 1,
            "workers": [{"name": "gpu-1", "alive": True, "gpu_memory_mb": 512.0},
                        {"name": "gpu-2", "alive": True, "gpu_memory_mb": None},
                        {"name": "gpu-3", "alive": False}]}


@pytest.fixture
async def metrics_server():
    """Start a metrics server on a free loopback port; stop it after the test."""
    servers = []

    async def start(metrics: Metrics, **kwargs):
        server = await serve_metrics(metrics, "127.0.0.1", 0, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        return await resp.text()


async def test_metrics_endpoint_shows_recorded_values(metrics_server):
    metrics = Metrics()
    metrics.request("telegram", "image")
    metrics.request("telegram", "image")
    metrics.request("discord", "busy")
    metrics.job_finished("image", 4.0)
    metrics.job_finished("image", 40.0)
    metrics.acknowledged("telegram", 0.2)
    metrics.failure("timeout")
    metrics.update_queue(SNAPSHOT)
    server = await metrics_server(metrics)
    assert server.port > 0

    text = await scrape(server.port)
    assert value(text, "claybot_requests_total", platform="telegram", outcome="image") == 2
    assert value(text, "claybot_requests_total", platform="discord", outcome="busy") == 1
    assert value(text, "claybot_job_seconds_count", outcome="image") == 2
    assert value(text, "claybot_job_seconds_sum", outcome="image") == 44.0
    assert value(text, "claybot_job_seconds_bucket", outcome="image", le="5.0") == 1
    assert value(text, "claybot_ack_seconds_count", platform="telegram") == 1
    assert value(text, "claybot_failures_total", kind="timeout") == 1
    assert value(text, "claybot_queue_waiting") == 3
    assert value(text, "claybot_queue_running") == 1
    assert value(text, "claybot_workers_alive") == 2
    assert value(text, "claybot_gpu_memory_bytes", worker="gpu-1") == 512 * 2**20
    assert value(text, "claybot_gpu_memory_bytes", worker="gpu-2") is None  # reports no value: no sample


async def test_worker_dropped_from_snapshot_disappears(metrics_server):
    metrics = Metrics()
    metrics.update_queue(SNAPSHOT)
    metrics.update_queue({"waiting": 0, "running": 0, "workers": [{"name": "gpu-9", "alive": True,
                                                                   "gpu_memory_mb": 100.0}]})
    server = await metrics_server(metrics)

    text = await scrape(server.port)
    assert value(text, "claybot_gpu_memory_bytes", worker="gpu-1") is None
    assert value(text, "claybot_gpu_memory_bytes", worker="gpu-9") == 100 * 2**20
    assert value(text, "claybot_workers_alive") == 1
    assert value(text, "claybot_queue_waiting") == 0


async def test_scrape_refreshes_queue_gauges_from_snapshot(metrics_server):
    state = {"waiting": 1, "running": 0, "workers": []}

    async def snapshot() -> dict:
        return dict(state)

    server = await metrics_server(Metrics(), snapshot=snapshot, interval=60)
    assert value(await scrape(server.port), "claybot_queue_waiting") == 1
    state["waiting"] = 7
    assert value(await scrape(server.port), "claybot_queue_waiting") == 7


async def test_refresh_loop_updates_gauges_without_scrapes(metrics_server):
    calls = 0

    async def snapshot() -> dict:
        nonlocal calls
        calls += 1
        return {"waiting": calls, "running": 0, "workers": []}

    metrics = Metrics()
    await metrics_server(metrics, snapshot=snapshot, interval=0.02)
    deadline = time.monotonic() + 5
    while calls < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert calls >= 3
    assert value(metrics.render().decode(), "claybot_queue_waiting") >= 2


async def test_failing_snapshot_does_not_break_metrics_and_warns_once(metrics_server, caplog):
    async def snapshot() -> dict:
        raise ConnectionError("redis is down")

    metrics = Metrics()
    metrics.request("telegram", "image")
    with caplog.at_level(logging.WARNING, logger="bot.observability"):
        server = await metrics_server(metrics, snapshot=snapshot, interval=0.01)  # the loop fails too, often
        for _ in range(3):
            text = await scrape(server.port)
            await asyncio.sleep(0.02)
    assert value(text, "claybot_requests_total", platform="telegram", outcome="image") == 1
    warnings = [r.getMessage() for r in caplog.records if "redis is down" in r.getMessage()]
    assert warnings == ["queue snapshot failed: ConnectionError: redis is down"]


async def test_slow_snapshot_does_not_hold_the_scrape(metrics_server):
    async def snapshot() -> dict:
        await asyncio.sleep(30)
        return {}

    server = await metrics_server(Metrics(), snapshot=snapshot, interval=60, scrape_timeout=0.1)
    started = time.monotonic()
    await scrape(server.port)
    assert time.monotonic() - started < 5


def test_two_metrics_instances_do_not_clash():
    first, second = Metrics(), Metrics()
    first.request("discord", "image")
    second.request("discord", "failed")
    assert value(first.render().decode(), "claybot_requests_total", platform="discord", outcome="image") == 1
    assert value(second.render().decode(), "claybot_requests_total", platform="discord", outcome="image") is None


@pytest.mark.parametrize("host", ["localhost", "LocalHost", "127.0.0.1", "127.1.2.3", "::1", "[::1]",
                                  "::ffff:127.0.0.1"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.0.0.1", "192.168.1.5", "example.com",
                                  "localhost.example.com", "128.0.0.1"])
def test_non_loopback_hosts(host):
    assert not is_loopback(host)
