"""The link between a chat process and a foreground `claybot worker` (queue.worker_address): address, key,
and an authenticated connection on each side, every step under a deadline.

It is multiprocessing's connection protocol (an HMAC challenge both ways, then length-prefixed frames carrying
``pipeline.core.codec`` bytes, never pickle); nothing is encrypted: the link belongs on a private network or a
Unix socket. What
this module adds is time limits: a peer that connects and says nothing is dropped after HANDSHAKE_TIMEOUT, in its
own thread, so it never holds up anyone else. Torch-free: the chat side imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection, Listener, answer_challenge, deliver_challenge

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0  # seconds for a peer to connect and prove the key; the real handshake takes milliseconds
MAX_PENDING = 32  # handshakes in progress at once; more connections are closed at once (a flood of silent peers)

Address = str | tuple[str, int]


def parse_address(address: str) -> Address:
    """"host:port" → a TCP address; anything else is a Unix socket path."""
    host, sep, port = address.rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else address


def worker_key(env_name: str) -> bytes | None:
    """The shared secret from the environment variable the config names, stripped of surrounding whitespace
    (a trailing newline from `export KEY=$(cat file)` must not make the two sides disagree); None when unset."""
    value = os.environ.get(env_name, "").strip()
    return value.encode() if value else None


@contextlib.contextmanager
def _deadline(conn: Connection, seconds: float, what: str) -> Iterator[None]:
    """Shut the connection's socket down if the block takes longer than ``seconds``: a blocked read then ends
    with EOF in whichever thread waits, and the block raises TimeoutError."""
    lock = threading.Lock()
    state = {"over": False, "fired": False}

    def expire() -> None:
        with lock:
            if state["over"]:
                return
            state["fired"] = True
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception:
        if state["fired"]:
            raise TimeoutError(f"{what} took longer than {seconds:g}s") from None
        raise
    finally:
        with lock:
            state["over"] = True
        timer.cancel()
    if state["fired"]:
        raise TimeoutError(f"{what} took longer than {seconds:g}s")


def connect(address: str, authkey: bytes, *, timeout: float = HANDSHAKE_TIMEOUT) -> Connection:
    """The chat side: connect and authenticate within ``timeout`` seconds, or raise (OSError, TimeoutError,
    multiprocessing.AuthenticationError)."""
    target = parse_address(address)
    if isinstance(target, tuple):
        sock = socket.create_connection(target, timeout=timeout)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
    sock.setblocking(True)  # Connection reads the raw descriptor; the deadline below bounds the handshake
    conn = Connection(sock.detach())
    try:
        with _deadline(conn, timeout, "the worker's handshake"):
            answer_challenge(conn, authkey)
            deliver_challenge(conn, authkey)
    except BaseException:
        conn.close()
        raise
    return conn


def listen(address: str, authkey: bytes, *, timeout: float = HANDSHAKE_TIMEOUT) -> Iterator[Connection]:
    """The worker side: authenticated connections, one after another. Each connection is authenticated in its
    own thread under ``timeout``, so a silent or slow peer never stops the accept loop or anyone else."""
    ready: queue.Queue[Connection] = queue.Queue()
    pending = threading.BoundedSemaphore(MAX_PENDING)

    def handshake(conn: Connection, peer: object) -> None:
        try:
            with _deadline(conn, timeout, "the handshake"):
                deliver_challenge(conn, authkey)
                answer_challenge(conn, authkey)
        except Exception as err:  # a wrong key, a silent or garbled peer, one that went away
            logger.warning("refused a connection from %s: %s", peer or "a local socket",
                           str(err) or type(err).__name__)
            conn.close()
        else:
            logger.info("queue connected from %s", peer or "a local socket")
            ready.put(conn)
        finally:
            pending.release()

    def accept_loop(listener: Listener) -> None:
        while not closed.is_set():
            try:
                conn = listener.accept()  # no authkey on the Listener: the handshake is ours, off this loop
            except OSError as err:
                if not closed.is_set():
                    logger.warning("accept failed: %s", err)
                    closed.wait(0.1)
                continue
            peer = listener.last_accepted
            if not pending.acquire(blocking=False):
                logger.warning("refused a connection from %s: %d handshakes already pending", peer, MAX_PENDING)
                conn.close()
                continue
            threading.Thread(target=handshake, args=(conn, peer), name="claybot-worker-handshake",
                             daemon=True).start()

    closed = threading.Event()
    with Listener(parse_address(address), backlog=64) as listener:
        logger.info("worker listening on %s", address)
        threading.Thread(target=accept_loop, args=(listener,), name="claybot-worker-accept", daemon=True).start()
        try:
            while True:
                yield ready.get()
        finally:
            closed.set()
