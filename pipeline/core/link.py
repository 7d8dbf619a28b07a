"""The link between a chat process and a foreground `claybot worker` (queue.worker_address): address, key,
an authenticated connection on each side, every step under a deadline, and the one framed receive both sides use.

It is multiprocessing's connection protocol (an HMAC challenge both ways, then length-prefixed frames carrying
``pipeline.core.codec`` bytes, never pickle); nothing is encrypted, and after the handshake each side trusts what
the other sends: the link belongs on a private network or a Unix socket. What this module adds is limits: each
handshake runs in its own thread and must prove the key within HANDSHAKE_TIMEOUT; a flood of strangers pushes out
its own oldest handshakes, not a real client's; refusals are logged at most once a minute, with a count; and a
message longer than its side's bound is refused from its length header. Torch-free: the chat side imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing.connection import Connection, Listener, answer_challenge, deliver_challenge

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds for the chat side to reach the worker and finish the handshake
HANDSHAKE_TIMEOUT = 1.0  # seconds from accept for a peer to prove the key (a real handshake: about a millisecond)
MAX_PENDING = 64  # handshakes in progress at once; past it the oldest stranger's is dropped
MAX_PENDING_PER_PEER = 32  # of them from one address (every local socket counts as one address)
WARN_EVERY = 60.0  # seconds between warnings about refused connections
BACKLOG = 256
# Messages are framed by a length header; each side refuses one longer than it can be before reading it (a forged
# header of 2^40 bytes once ended the worker with MemoryError). The worker's bound is a full batch of photos at
# bot.max_photo_mb (batch_limit); the chat side's is ANSWER_LIMIT: an answer holds one result PNG of at most 4 MP
# (12 MB even stored uncompressed), its tags and timings.
MESSAGE_SLACK = 2**20
ANSWER_LIMIT = 64 * 2**20

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


class BadMessage(OSError):
    """A message on the link could not be read; its connection was closed (as when the peer goes away)."""


class FrameTooLarge(BadMessage):
    """A message announced more bytes than the link allows; its connection was closed unread."""


def batch_limit(max_photo_bytes: int, max_batch: int) -> int:
    """The longest message a queue sends the worker: ``max_batch`` photos at the size limit, and room for the rest."""
    return max_batch * max_photo_bytes + MESSAGE_SLACK


def receive(conn: Connection, most: int | None) -> bytes:
    """The next frame on a link (both sides read through here; ``pipeline.core.codec`` decodes it). A frame
    announcing more than ``most`` bytes is refused from its header: the connection is closed and FrameTooLarge
    raised. EOFError/OSError when the link is gone. ``most`` None: no bound (the local worker's pipe, from its own
    parent)."""
    if conn.closed:
        raise OSError("the link is closed")
    try:
        return conn.recv_bytes(most)
    except OSError:
        if not conn.closed and conn.readable:
            raise
        conn.close()  # recv_bytes left the unread frame in the socket: nothing more can be read from it
        raise FrameTooLarge(f"a message announced more than the {most:,} bytes allowed") from None


def connect(address: str, authkey: bytes, *, timeout: float = CONNECT_TIMEOUT) -> Connection:
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


class _Pending:
    """Handshakes in progress, oldest first. A newcomer past the bounds pushes out the oldest stranger of the peer
    address with the most of them (its own, in a flood from one address), never a peer that has proven the key:
    silent sockets reopened as fast as they close then cycle among themselves, and a real client, which proves
    the key within milliseconds of connecting, gets through."""

    def __init__(self, most: int, most_per_peer: int) -> None:
        self.most, self.most_per_peer = most, most_per_peer
        self._lock = threading.Lock()
        self._started: dict[Connection, tuple[float, str, bool]] = {}  # started, peer, proven; oldest first
        self._dropped: dict[Connection, str] = {}  # taken out before their handshake ended: why

    # A connection is hung up on and closed only under the lock, so a descriptor is never shut down after its
    # handshake thread closed it (and the number went to another socket).

    def add(self, conn: Connection, peer: str) -> Connection | None:
        """Register a new handshake; the one it pushes out, if any (hung up on: its thread's read ends)."""
        with self._lock:
            strangers = [(c, p) for c, (_, p, proven) in self._started.items() if not proven]
            mine = [c for c, p in strangers if p == peer]
            victim = None
            if len(mine) >= self.most_per_peer:
                victim = mine[0]
            elif len(self._started) >= self.most and strangers:
                counts = Counter(p for _, p in strangers)
                crowded = max(counts, key=lambda p: (counts[p], p == peer))
                victim = next(c for c, p in strangers if p == crowded)
            if victim is not None:
                del self._started[victim]
                self._dropped[victim] = "pushed out by newer connections before it proved the key"
                _hang_up(victim)
            self._started[conn] = (time.monotonic(), peer, False)
            return victim

    def proven(self, conn: Connection) -> None:
        """The peer proved the key: no flood may push it out now (its deadline still holds)."""
        with self._lock:
            if conn in self._started:
                started, peer, _ = self._started[conn]
                self._started[conn] = (started, peer, True)

    def remove(self, conn: Connection, *, close: bool = False) -> str | None:
        """Done with this handshake (and the connection, with ``close``); why it was taken out meanwhile (pushed
        out, too slow), or None."""
        with self._lock:
            self._started.pop(conn, None)
            if close:
                conn.close()
            return self._dropped.pop(conn, None)

    def expire(self, deadline: float, why: str) -> None:
        """Hang up on the handshakes started before ``deadline`` (monotonic)."""
        with self._lock:
            late = [conn for conn, (started, _, _) in self._started.items() if started < deadline]
            for conn in late:
                del self._started[conn]
                self._dropped[conn] = why
                _hang_up(conn)


class _Refusals:
    """The warning about refused connections, at most one line per ``every`` seconds: the first at once, then the
    count of the rest (a flood of strangers once logged 71,570 lines in 20 s)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._quiet_until = 0.0
        self._logged = 0.0  # when the last line was written
        self._held = 0
        self._latest = ""

    def note(self, peer: str, reason: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._quiet_until:
                self._held += 1
                self._latest = f"{peer}: {reason}"
                return
            self._flush(now)
            logger.warning("refused a connection from %s: %s", peer, reason)
            self._quiet_until, self._logged = now + self.every, now

    def flush(self, *, due_only: bool = True) -> None:
        """Log the count held back, once the quiet interval is over (or now, on the way out)."""
        with self._lock:
            now = time.monotonic()
            if self._held and (now >= self._quiet_until or not due_only):
                self._flush(now)
                self._quiet_until = now + self.every

    def _flush(self, now: float) -> None:
        if self._held:
            logger.warning("refused %d more connection(s) in %.0f s (the latest from %s)", self._held,
                           now - self._logged, self._latest)
            self._held, self._logged = 0, now


def _hang_up(conn: Connection) -> None:
    """Shut a connection's socket down from another thread: a read blocked on it ends with EOF."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def listen(address: str, authkey: bytes, *, timeout: float = HANDSHAKE_TIMEOUT,
           warn_every: float = WARN_EVERY) -> Iterator[Connection]:
    """The worker side: authenticated connections, one after another. Each is authenticated in its own thread
    under ``timeout``, so a silent or slow peer never stops the accept loop or anyone else; a flood of strangers
    pushes out its own oldest handshakes, not a real client's (see _Pending); refusals are logged at most once
    per ``warn_every`` seconds, with a count."""
    ready: queue.Queue[Connection] = queue.Queue()
    pending = _Pending(MAX_PENDING, MAX_PENDING_PER_PEER)
    refusals = _Refusals(warn_every)

    def handshake(conn: Connection, peer: str) -> None:
        try:
            deliver_challenge(conn, authkey)  # the peer proves the key
            pending.proven(conn)
            answer_challenge(conn, authkey)  # and we prove it
        except Exception as err:  # a wrong key, a silent or garbled peer, one that went away or was pushed out
            refusals.note(peer, pending.remove(conn, close=True) or str(err) or type(err).__name__)
            return
        dropped = pending.remove(conn)
        if dropped is None:
            logger.info("queue connected from %s", peer)
            ready.put(conn)
        else:  # proven, but past the deadline: it was hung up on
            refusals.note(peer, dropped)
            pending.remove(conn, close=True)

    def accept_loop(listener: Listener) -> None:
        while not closed.is_set():
            try:
                conn = listener.accept()  # no authkey on the Listener: the handshake is ours, off this loop
            except OSError as err:
                if not closed.is_set():
                    logger.warning("accept failed: %s", err)
                    closed.wait(0.1)
                continue
            peer = _peer_name(listener.last_accepted)
            pending.add(conn, peer)
            try:
                threading.Thread(target=handshake, args=(conn, peer), name="claybot-worker-handshake",
                                 daemon=True).start()
            except RuntimeError as err:  # no thread to be had: this one is refused, the loop goes on
                pending.remove(conn, close=True)
                refusals.note(peer, str(err))

    def reaper() -> None:
        """One thread hangs up on every handshake past its deadline (not a timer per connection)."""
        while not closed.wait(min(0.1, timeout / 4)):
            pending.expire(time.monotonic() - timeout, f"no handshake within {timeout:g}s")
            refusals.flush()

    closed = threading.Event()
    with Listener(parse_address(address), backlog=BACKLOG) as listener:
        logger.info("worker listening on %s", address)
        threading.Thread(target=accept_loop, args=(listener,), name="claybot-worker-accept", daemon=True).start()
        threading.Thread(target=reaper, name="claybot-worker-reaper", daemon=True).start()
        try:
            while True:
                yield ready.get()
        finally:
            closed.set()
            pending.expire(float("inf"), "the worker stopped listening")
            refusals.flush(due_only=False)


def _peer_name(peer: object) -> str:
    """The address a connection came from, without its port (a flood reconnects from new ports)."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "a local socket"
