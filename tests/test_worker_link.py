"""The link to a foreground `claybot worker`: a silent stranger never blocks the chat process (issue 13, part 3)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pipe
from pathlib import Path

import pytest

from pipeline.core import codec, link
from pipeline.core.jobs import Done, Ready
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


class Flood:
    """``count`` silent strangers, each reconnecting as soon as the worker hangs up, until stopped (or ``seconds``
    have passed); ``opened`` counts their connections."""

    def __init__(self, port: int, count: int = 40, seconds: float = 60.0) -> None:
        self.port, self.end, self.opened = port, time.monotonic() + seconds, 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._stranger, daemon=True) for _ in range(count)]

    def _stranger(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.end:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            except OSError:
                continue
            self.opened += 1
            with sock:
                sock.settimeout(0.5)
                while not self.stop.is_set():
                    try:
                        if not sock.recv(4096):
                            break  # hung up on: come straight back
                    except TimeoutError:
                        continue
                    except OSError:
                        break

    def __enter__(self) -> Flood:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def test_a_flood_of_silent_strangers_neither_keeps_a_real_client_out_nor_floods_the_log(caplog):
    # Before: 40 strangers kept the 32 pending handshakes full, the real client was refused on 8 of 10 tries, and
    # the worker logged 71,570 warnings in 20 s.
    caplog.set_level(logging.INFO, logger="pipeline.core.link")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    connections = link.listen(address, b"key")
    served: list = []
    taker = threading.Thread(target=lambda: served.extend(next(connections) for _ in range(10)), daemon=True)
    taker.start()
    _raw_connection(address).close()  # the listener is up
    try:
        with Flood(port) as flood:
            while flood.opened < 200:  # the flood is on
                threading.Event().wait(0.05)
            for attempt in range(10):
                conn = link.connect(address, b"key")  # raises on a refusal
                for _ in range(200):
                    if len(served) > attempt:
                        break
                    threading.Event().wait(0.05)
                served[attempt].send({"op": "ready", "n": attempt})
                assert conn.recv() == {"op": "ready", "n": attempt}
                conn.close()
            opened = flood.opened
    finally:
        taker.join(timeout=10)
        connections.close()  # the count held back is logged on the way out
    warnings = [record.getMessage() for record in caplog.records
                if record.levelno >= logging.WARNING and "127.0.0.1" in record.getMessage()]
    assert len(warnings) <= 3, warnings[:10]
    assert warnings[0].startswith("refused a connection from 127.0.0.1: ")
    held = int(warnings[-1].split()[1])  # "refused N more connection(s) in S s (the latest from ...)"
    assert warnings[-1].startswith("refused ") and held >= opened // 2, (warnings, opened)


def test_strangers_push_out_their_own_oldest_handshakes_never_another_address_nor_a_proven_one():
    pending = link._Pending(most=8, most_per_peer=4)
    pairs = [Pipe() for _ in range(26)]  # (the worker's end, the peer's end)
    proven, other, flood, more = pairs[0][0], pairs[1][0], [a for a, _ in pairs[2:22]], [a for a, _ in pairs[22:]]
    assert pending.add(proven, "10.0.0.1") is None
    pending.proven(proven)
    assert pending.add(other, "10.0.0.2") is None
    pushed = [pending.add(conn, "10.0.0.66") for conn in flood]
    assert pushed[:4] == [None] * 4 and pushed[4:] == flood[:16]  # each newcomer pushes out its own oldest
    # From other addresses, past the total: the most crowded address gives way.
    assert [pending.add(conn, f"10.0.1.{n}") for n, conn in enumerate(more)] == [None, None, *flood[16:18]]
    assert pending.remove(proven) is None and pending.remove(other) is None
    assert pending.remove(flood[0]) == "pushed out by newer connections before it proved the key"
    with pytest.raises(EOFError):  # hung up on: a stranger pushed out hears so at once
        pairs[2][1].recv()
    for conn, peer in pairs:
        conn.close()
        peer.close()


def test_a_frame_over_the_bound_closes_the_link_unread():
    worker_end, chat_end = Pipe()
    worker_end.send_bytes(codec.encode(Ready("cpu", "float32", 1)))
    assert codec.decode(link.receive(chat_end, link.ANSWER_LIMIT)) == Ready("cpu", "float32", 1)
    os.write(worker_end.fileno(), struct.pack("!i", -1) + struct.pack("!Q", 2**40))  # 1 TB announced
    with pytest.raises(link.FrameTooLarge, match="more than the 67,108,864 bytes allowed"):
        link.receive(chat_end, link.ANSWER_LIMIT)
    assert chat_end.closed


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


async def test_claybot_worker_drops_silent_strangers_and_a_forged_frame_and_serves_a_real_client(
        tiny_config, tiny_config_path, tmp_path, monkeypatch):
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
        # A key holder announces a frame of 2^40 bytes (before: MemoryError, and the worker was gone).
        forger = await asyncio.to_thread(link.connect, address, b"test-secret")
        assert isinstance(codec.decode(await asyncio.to_thread(forger.recv_bytes)), Ready)
        os.write(forger.fileno(), struct.pack("!i", -1) + struct.pack("!Q", 2**40))
        with pytest.raises((EOFError, ConnectionResetError)):
            await asyncio.to_thread(forger.recv_bytes)  # hung up on
        forger.close()
        monkeypatch.setenv("CLAYBOT_WORKER_KEY", "test-secret")
        queue = LocalQueue(tiny_config.gpu(), tiny_config.queue.model_copy(update={"worker_address": address}))
        await queue.start()
        try:
            await queue.wait_ready(timeout=60)
            done = await (await submit(queue, photo_bytes(), seed=3)).result(timeout=120)
            assert isinstance(done, Done) and done.seed == 3
        finally:
            await queue.close(grace=5)
        for stranger in strangers:  # hung up on after the handshake deadline: the challenge, then EOF
            stranger.settimeout(30)
            received = b""
            while chunk := await asyncio.to_thread(stranger.recv, 4096):
                received += chunk
            assert b"#CHALLENGE#" in received
        assert "closing a queue connection: a message announced more than the" in log_path.read_text()
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
