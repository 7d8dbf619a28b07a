"""benchmarks/guides_cost.py: its full-size guide architectures' sizes. Its smoke run end to end is
tests/test_device_kit.py's (the GPU run kit's CPU rehearsal runs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "guides_cost.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


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
