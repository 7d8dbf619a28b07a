"""`claybot status` shows what a running claybot is doing: depth, live workers, the last hour's jobs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomlkit

from bot.config import load_config
from pipeline.core.jobs import JobFailed
from pipeline.core.local import LocalQueue
from pipeline.core.status import percentile, render, summarize
from tests.conftest import photo_bytes, submit

CLAYBOT = Path(sys.executable).parent / "claybot"


def _config_with_data_dir(tiny_config_path: Path, folder: Path) -> Path:
    doc = tomlkit.parse(tiny_config_path.read_text(encoding="utf-8"))
    doc["bot"]["data_dir"] = str(folder)
    path = folder / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def _status(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLAYBOT, "status", "--config", config], capture_output=True, text=True, timeout=60)


async def test_status_shows_a_job_that_just_finished_and_the_live_worker(tiny_config_path, tmp_path):
    config_path = _config_with_data_dir(tiny_config_path, tmp_path)
    config = load_config(config_path)
    queue = LocalQueue(config.gpu(), config.queue, status_path=tmp_path / "status.json")
    await queue.start()
    try:
        await queue.wait_ready(timeout=120)
        await (await submit(queue, photo_bytes(), seed=1)).result(timeout=120)
        with pytest.raises(JobFailed):
            await submit(queue, b"not an image", seed=2)
        shown = _status(config_path)
        pid = queue.worker_info["pid"]
    finally:
        await queue.close(grace=5)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "queue:    0 waiting, 0 running" in out
    assert f"worker:   local-{pid} alive on cpu (batch up to {config.pipeline.max_batch}, pid {pid})" in out
    assert "last hour: 1 done" in out
    assert "job time: p50 " in out


def test_status_without_a_running_claybot_says_so(tiny_config_path, tmp_path):
    shown = _status(_config_with_data_dir(tiny_config_path, tmp_path))
    assert shown.returncode == 1
    assert "claybot is not running here" in shown.stdout


def test_summary_counts_and_percentiles():
    records = [(0.0, float(s), "done") for s in range(1, 101)] + [(0.0, 1.0, "timeout"), (0.0, 2.0, "busy")]
    summary = summarize(records)
    assert summary["done"] == 100 and summary["failed"] == {"busy": 1, "timeout": 1}
    assert summary["p50"] == 50.0 and summary["p95"] == 95.0
    assert percentile([], 50) is None
    text = render({"backend": "redis", "waiting": 3, "running": 1, "workers": [], "history": records})
    assert "3 waiting, 1 running" in text and "workers:  none alive" in text and "1 busy, 1 timeout" in text
