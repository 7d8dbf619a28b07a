"""The link to a foreground `claybot worker`: a silent stranger never blocks the chat process (issue 13, part 3)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.core import link
from pipeline.core.jobs import Done
from pipeline.core.local import LocalQueue
from tests.conftest import photo_bytes, submit


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_both_sides_read_the_key_the_same_way(monkeypatch):
    monkeypatch.setenv("CLAYBOT_WORKER_KEY", "  s3cret\n")
    assert link.worker_key("CLAYBOT_WORKER_KEY") == b"s3cret"
    monkeypatch.setenv("CLAYBOT_WORKER_KEY", " \n")
    assert link.worker_key("CLAYBOT_WORKER_KEY") is None


def _raw_connection(address: str) -> socket.socket:
    """A plain socket connected to the worker's address (retried while the listener comes up)."""
    target = link.parse_address(address)
    for _ in range(100):
        sock = socket.socket(socket.AF_INET if isinstance(target, tuple) else socket.AF_UNIX)
        try:
            sock.connect(target)
            return sock
        except OSError:
            sock.close()
            threading.Event().wait(0.05)
    raise TimeoutError(f"nothing listens on {address}")


@pytest.mark.parametrize("unix", [False, True])
def test_a_silent_peer_is_dropped_and_a_real_one_served_meanwhile(tmp_path, unix):
    address = str(tmp_path / "worker.sock") if unix else f"127.0.0.1:{_free_port()}"
    connections = link.listen(address, b"key", timeout=1.0)
    served = []
    threading.Thread(target=lambda: served.extend(next(connections) for _ in range(1)), daemon=True).start()
    silent = _raw_connection(address)  # connects, then says nothing
    try:
        conn = link.connect(address, b"key", timeout=5.0)  # served while the silent peer still holds its handshake
        for _ in range(100):
            if served:
                break
            threading.Event().wait(0.05)
        served[0].send({"op": "ready"})
        assert conn.recv() == {"op": "ready"}
        # The silent peer is hung up on once its handshake time is over (it read the challenge, then EOF).
        silent.settimeout(10)
        received = b""
        while chunk := silent.recv(4096):
            received += chunk
        assert received.startswith(b"\x00\x00\x00") and b"#CHALLENGE#" in received
        conn.close()
    finally:
        silent.close()
        connections.close()


def test_connecting_gives_up_on_a_peer_that_never_answers():
    with socket.socket() as server:  # listens (so the TCP connect succeeds) and never says a word
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with ThreadPoolExecutor(1) as pool:
            attempt = pool.submit(link.connect, f"127.0.0.1:{port}", b"key", timeout=0.5)
            with pytest.raises(TimeoutError, match="handshake took longer than 0.5s"):
                attempt.result(timeout=60)


def test_a_wrong_key_is_refused_on_both_sides(tmp_path):
    address = str(tmp_path / "worker.sock")
    connections = link.listen(address, b"right", timeout=2.0)
    threading.Thread(target=lambda: next(connections, None), daemon=True).start()
    _raw_connection(address).close()  # the listener is up
    from multiprocessing import AuthenticationError

    with pytest.raises(AuthenticationError):
        link.connect(address, b"wrong", timeout=5.0)


async def test_a_silent_client_does_not_stop_a_real_client_of_claybot_worker(tiny_config, tiny_config_path, tmp_path,
                                                                            monkeypatch):
    address = f"127.0.0.1:{_free_port()}"
    claybot = Path(sys.executable).parent / "claybot"
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        # The worker's key has the trailing newline `export KEY=$(cat file)`-style setups leave; the chat side's not.
        worker = subprocess.Popen([claybot, "worker", "--config", tiny_config_path, "--listen", address],
                                  env={**os.environ, "CLAYBOT_WORKER_KEY": "test-secret\n"}, stdout=log, stderr=log)
    strangers: list[socket.socket] = []
    try:
        for _ in range(600):  # the worker loads its models first
            if "worker listening" in log_path.read_text():
                break
            await asyncio.sleep(0.2)
        host, port = address.rsplit(":", 1)
        strangers = [socket.create_connection((host, int(port))) for _ in range(3)]  # connect, then say nothing
        monkeypatch.setenv("CLAYBOT_WORKER_KEY", "test-secret")
        queue = LocalQueue(tiny_config.gpu(), tiny_config.queue.model_copy(update={"worker_address": address}))
        await queue.start()
        try:
            await queue.wait_ready(timeout=60)
            done = await (await submit(queue, photo_bytes(), seed=3)).result(timeout=120)
            assert isinstance(done, Done) and done.seed == 3
        finally:
            await queue.close(grace=5)
        for _ in range(100):  # the strangers are dropped after the handshake deadline
            if log_path.read_text().count("refused a connection") >= 3:
                break
            await asyncio.sleep(0.2)
        assert log_path.read_text().count("refused a connection") >= 3
        assert worker.poll() is None
    finally:
        for stranger in strangers:
            stranger.close()
        worker.terminate()
        worker.wait(timeout=30)


async def test_frames_that_are_not_messages_are_skipped_and_the_job_is_still_answered(tiny_config, tmp_path,
                                                                                     monkeypatch, caplog):
    # A worker of another version (or a broken one) on the link: its garbage is logged and skipped, never run or
    # fatal to the chat process, and the job it held is answered when the worker says the batch is over.
    from pipeline.core import codec
    from pipeline.core.jobs import CRASH_REASON, ErrorKind, Failed, Idle, JobFailed, Ready, Started, Update

    address = str(tmp_path / "worker.sock")
    connections = link.listen(address, b"key", timeout=5.0)

    def broken_worker() -> None:
        conn = next(connections)
        conn.send_bytes(codec.encode(Ready("cpu", "float32", 4)))
        batch = codec.decode(conn.recv_bytes())
        conn.send_bytes(b"\x80\x04\x95garbage, or a pickle")
        conn.send_bytes(codec.encode(Update((batch.tasks[0].id,), Started(1)))[:-1])  # truncated
        conn.send_bytes(codec.encode(Idle()))
        with contextlib.suppress(EOFError, OSError):
            conn.recv_bytes()  # until the queue hangs up

    threading.Thread(target=broken_worker, daemon=True).start()
    monkeypatch.setenv("CLAYBOT_WORKER_KEY", "key")
    queue = LocalQueue(tiny_config.gpu(), tiny_config.queue.model_copy(update={"worker_address": address,
                                                                                "batch_window": 0.0}))
    await queue.start()
    try:
        assert (await queue.wait_ready(timeout=30))["device"] == "cpu"
        handle = await submit(queue, photo_bytes(), seed=1)
        with pytest.raises(JobFailed) as failed:
            await handle.result(timeout=30)
        assert failed.value.failed == Failed(CRASH_REASON, ErrorKind.INTERNAL)
    finally:
        await queue.close(grace=1)
        connections.close()
    errors = [r.getMessage() for r in caplog.records if "not a message" in r.getMessage()]
    assert len(errors) == 2 and "not a claybot frame" in errors[0] and "truncated frame" in errors[1]
