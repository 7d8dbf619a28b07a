"""What `claybot status` shows: queue depth, live workers, and the last hour's jobs, from either backend."""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

WINDOW = 3600.0


class History:
    """Recently answered jobs: when, how long from submit to answer, and how they ended."""

    def __init__(self, maxlen: int = 20_000) -> None:
        self.records: deque[tuple[float, float, str]] = deque(maxlen=maxlen)

    def add(self, seconds: float, outcome: str) -> None:
        """Record one answer; ``outcome`` is "done" or the failure kind."""
        self.records.append((time.time(), seconds, outcome))

    def recent(self, window: float = WINDOW) -> list[tuple[float, float, str]]:
        """Records of the last ``window`` seconds."""
        since = time.time() - window
        return [r for r in self.records if r[0] >= since]


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(records: list[tuple[float, float, str]]) -> dict[str, Any]:
    """Counts and job-time percentiles of answered jobs."""
    done = [seconds for _, seconds, outcome in records if outcome == "done"]
    failed: dict[str, int] = {}
    for _, _, outcome in records:
        if outcome != "done":
            failed[outcome] = failed.get(outcome, 0) + 1
    return {"done": len(done), "failed": failed, "p50": percentile(done, 50), "p95": percentile(done, 95)}


def write_atomically(path: Path, status: dict[str, Any]) -> None:
    """Replace the status file in one step, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status), encoding="utf-8")
    os.replace(tmp, path)


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render(status: dict[str, Any]) -> str:
    """The status as a few readable lines."""
    lines = [f"backend:  {status['backend']}",
             f"queue:    {status['waiting']} waiting, {status['running']} running"]
    workers = status.get("workers", [])
    if not workers:
        lines.append("workers:  none alive")
    for worker in workers:
        memory = worker.get("gpu_memory_mb")
        gpu = f", GPU memory {memory:.0f} MB" if memory else ""
        state = ("loading its models" if worker.get("loading") else "alive") if worker.get("alive") else "NOT RUNNING"
        named = worker.get("kinds")  # from a heartbeat in Redis: only the kinds claybot knows are shown
        kinds = [kind for kind in ("picture", "clip") if isinstance(named, list) and kind in named]
        serves = f", serving {' and '.join(f'{kind}s' for kind in kinds)}" if kinds else ""
        lines.append(f"worker:   {worker['name']} {state} on {worker.get('device', '?')} (batch up to "
                     f"{worker.get('max_batch', '?')}, pid {worker.get('pid', '?')}){gpu}{serves}")
    summary = summarize([tuple(r[:3]) for r in status.get("history", [])])
    failed = ", ".join(f"{n} {kind}" for kind, n in sorted(summary["failed"].items())) or "none"
    lines.append(f"last hour: {summary['done']} done, failed: {failed}")
    if summary["p50"] is not None:
        lines.append(f"job time: p50 {summary['p50']:.2f}s, p95 {summary['p95']:.2f}s (submit to answer)")
    return "\n".join(lines)
