"""A real redis-server on 127.0.0.1 for the tests, and `claybot worker` processes serving it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomlkit

CLAYBOT = Path(sys.executable).parent / "claybot"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_redis_server() -> str:
    """The redis-server binary; skipped only outside CI (CI installs it and must run these tests)."""
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed, and CI must run the Redis tests (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return path


class RedisServer:
    """redis-server with AOF persistence (fsync always) in a folder of its own, restartable on the same port."""

    def __init__(self, folder: Path) -> None:
        self.binary = require_redis_server()
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """Die at once, as a crash would (AOF with fsync always keeps every acknowledged write)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def redis_config(tiny_config_path: Path, folder: Path, url: str, *, steps: int | None = None, **queue) -> Path:
    """The tiny config with the Redis backend (and, given ``steps``, jobs that run that many denoising steps)."""
    doc = tomlkit.parse(tiny_config_path.read_text(encoding="utf-8"))
    doc["queue"]["backend"] = "redis"
    doc["queue"]["redis_url"] = url
    for key, value in queue.items():
        doc["queue"][key] = value
    if steps is not None:
        doc["pipeline"]["steps"] = steps
    path = folder / f"redis-{abs(hash((url, steps, tuple(sorted(queue.items())))))}.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


class WorkerProcess:
    """A `claybot worker` process, with the parts of ``subprocess.Popen`` the tests use (poll, wait, terminate, kill,
    pid): forked from the local queue's fork server, so it skips the seconds of imports a fresh interpreter pays."""

    def __init__(self, process) -> None:
        self.process, self.pid = process, process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("claybot worker", timeout or 0)
        return self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()


def _worker_main(config: str, log_path: str) -> None:
    """The child: the log file as its stdout and stderr, then the `claybot worker --config CONFIG` command line."""
    from bot.cli import main

    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own streams
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.exit(main(["worker", "--config", config]))


def start_worker(config: Path, name: str) -> WorkerProcess:
    """`claybot worker` on the Redis backend, run by its command line as an operator runs it (tests/test_worker.py
    runs the executable itself); its log goes to <config folder>/<name>.log."""
    from pipeline.core.local import worker_context

    process = worker_context().Process(target=_worker_main, args=(str(config), str(config.parent / f"{name}.log")),
                                       name=f"claybot-worker-{name}", daemon=True)
    process.start()
    return WorkerProcess(process)


def stop_worker(worker: WorkerProcess) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def redis_queue(config_path, owner: str):
    """The chat side's Redis queue for a config file, as process ``owner``."""
    from bot.config import load_config
    from pipeline.core.redis_queue import RedisQueue

    config = load_config(config_path)
    return RedisQueue(config.gpu(), config.queue, owner=owner)
