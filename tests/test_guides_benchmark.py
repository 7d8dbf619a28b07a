"""benchmarks/guides_cost.py: its CPU smoke run end to end and its full-size guide architectures' sizes.

The smoke run checks that the script runs and reports every figure, not that anything is fast.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "guides_cost.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_smoke_run_reports_the_cost_per_step_of_each_guide(tmp_path):
    out = tmp_path / "guides.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--repeats", "1", "--json", str(out)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["mode"] == "smoke" and report["step_counts"] == [4, 16]
    assert set(report["runs"]) == {"none", "structure", "identity", "both"}
    for name, run in report["runs"].items():
        # a slope over two step counts: reported, but on a busy 2-core machine its sign is noise (no timing checks)
        assert isinstance(run["per_step_s"], float) and math.isfinite(run["per_step_s"]), name
        assert set(run["denoise_s"]) == {"4", "16"}
        assert run["steps_run"] == {"4": 4, "16": 16}, name  # the slope is over two different step counts
    assert report["per_step_ratio_to_none"]["none"] == 1.0
    assert "structure" in proc.stdout and "× none" in proc.stdout


def test_meta_mode_builds_the_full_size_guides_at_their_published_sizes(tmp_path):
    out = tmp_path / "meta.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--meta", "--json", str(out)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    params = json.loads(out.read_text(encoding="utf-8"))["params"]
    for name in ("image_encoder", "ip_adapter", "depth_model"):
        assert abs(params[name]["params"] / params[name]["published_params"] - 1) < 0.01, name
    # an SDXL ControlNet copies the UNet's encoder half: about half its parameters
    assert 0.4 < params["controlnet"]["params"] / params["unet"]["params"] < 0.6
