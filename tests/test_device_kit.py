"""The GPU run kit (benchmarks/device/): its CPU rehearsal end to end, its time budgets, and its choice of wheels.

The rehearsal, `run.sh --smoke`, runs every step of the GPU run on the tiny models: it checks that the kit and the
benchmarks behind it run and write every figure, not that anything is fast. It replaces the separate smoke runs of
gpu_speed.py and guides_cost.py (their checks are here).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "benchmarks" / "device"
ANIMATE = ROOT / "benchmarks" / "animate_speed.py"


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _numbers(tree) -> list[float]:
    """Every number in a JSON tree."""
    if isinstance(tree, dict):
        return [n for v in tree.values() for n in _numbers(v)]
    if isinstance(tree, list):
        return [n for v in tree for n in _numbers(v)]
    return [tree] if isinstance(tree, int | float) and not isinstance(tree, bool) else []


@pytest.fixture(scope="module")
def kit():
    module = load_script(KIT / "kit.py")
    yield module
    sys.modules.pop(module.__name__, None)


@pytest.fixture(scope="module")
def wheels():
    module = load_script(KIT / "wheels.py")
    yield module
    sys.modules.pop(module.__name__, None)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """`run.sh --smoke` once: (exit status, output folder, its log)."""
    out = tmp_path_factory.mktemp("device-out")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(KIT / "run.sh"), "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    return proc, out


def test_rehearsal_runs_every_step_and_brings_back_what_the_device_tool_can(rehearsal):
    proc, out = rehearsal
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    steps = ["build", "speed", "switches", "compile", "guides"] + (["animate"] if ANIMATE.is_file() else []) + [
        "edit"]
    files = sorted(p.name for p in out.iterdir())
    # build's figures go into run.json: a file per other step, run.json and run.log
    assert files == sorted(["run.log", "run.json", *(f"{s}.json" for s in steps if s != "build")])
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())  # the device tool brings back 8 files
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert record["mode"] == "smoke"
    assert {name: s["status"] for name, s in record["steps"].items()} == {s: "ok" for s in steps} | (
        {} if ANIMATE.is_file() else {"animate": "skipped: no benchmarks/animate_speed.py"})
    assert any(_positive(n) for n in _numbers(record["steps"]["build"]["figures"]))
    host = record["host"]
    assert host["torch"] and host["diffusers"] and host["python"]
    assert "gpu" in host  # None here: no nvidia-smi
    assert 0 < record["estimate_s"] <= 480
    log = (out / "run.log").read_text(encoding="utf-8")
    assert log.index("estimate: at most") < log.index("== build")  # printed before anything runs
    for step in steps[1:]:
        report = json.loads((out / f"{step}.json").read_text(encoding="utf-8"))
        assert any(_positive(n) for n in _numbers(report)), step


def test_rehearsal_edit_step_reports_the_edit_engines_picture_time(rehearsal):
    # The edit engine's benchmark (benchmarks/edit_speed.py --smoke): claybot's EditEngine on the tiny klein.
    proc, out = rehearsal
    report = json.loads((out / "edit.json").read_text(encoding="utf-8"))
    assert report["mode"] == "smoke" and report["complete"] is True and report["device"]["type"] == "cpu"
    run = report["runs"]["edit"]
    assert run["pipeline"] == "Flux2KleinPipeline" and run["steps"] == 4 and run["size"] == [128, 128]
    for key in ("seconds_per_picture", "s_per_step", "denoise_s", "first_call_s", "build_s"):
        assert _positive(run[key]), key
    assert run["peak_gpu_bytes"] is None  # no GPU: said so, not made up
    assert all(_positive(count) for count in run["params"].values())
    assert "edit_speed (smoke)" in (out / "run.log").read_text(encoding="utf-8")


def test_rehearsal_animate_step_reports_every_figure_of_both_families(rehearsal):
    # The animation benchmark's smoke run (benchmarks/animate_speed.py --smoke), as the kit runs it.
    proc, out = rehearsal
    report = json.loads((out / "animate.json").read_text(encoding="utf-8"))
    assert report["mode"] == "smoke" and report["device"]["type"] == "cpu"
    assert set(report["runs"]) == {"wan", "ltx"}
    for family, run in report["runs"].items():
        assert run["frames"] == 9 and run["steps"] == 2, family
        for key in ("seconds_per_clip", "s_per_step", "denoise_s", "first_call_s", "build_s"):
            assert _positive(run[key]), (family, key)
        assert run["peak_gpu_bytes"] is None  # no GPU: said so, not made up
        assert all(_positive(count) for count in run["params"].values()), family
        assert _positive(run["mp4"]["bytes"]) and run["mp4"]["attempts"] >= 1, family
    log = (out / "run.log").read_text(encoding="utf-8")
    assert "wan: tiny wan-shaped" in log and "s per clip" in log


def test_rehearsal_speed_step_reports_baseline_fast_preset_and_the_bare_ratio(rehearsal):
    proc, out = rehearsal
    report = json.loads((out / "speed.json").read_text(encoding="utf-8"))
    assert report["mode"] == "smoke" and report["complete"] is True
    setup = report["setup"]
    assert setup["n_steps"] == 5 and setup["batches"] == [1, 2]
    assert setup["prompt"].startswith("(Clay Animation, Clay:2)") and _positive(setup["prompt_tokens"])
    runs = report["runs"]
    assert list(runs) == ["baseline", "fast", "bare"]
    for name, run in runs.items():
        assert set(run["batches"]) == {"1", "2"}, name
        for batch, figures in run["batches"].items():
            assert _positive(figures["seconds"]) and _positive(figures["images_per_s"]), (name, batch)
            assert _positive(figures["unet_steps_per_s"]), (name, batch)
            assert _positive(figures["first_call_s"]), (name, batch)
            stages = figures["stages"]
            for stage in ("vae_encode", "unet", "vae_decode", "total"):
                assert _positive(stages[stage]), (name, batch, stage)
            if name != "bare":
                for stage in ("tag", "prompt", "denoise"):
                    assert _positive(stages[stage]), (name, batch, stage)
                assert stages["denoise"] <= stages["total"]
            assert "peak_gpu_mem_bytes" in figures  # None on the CPU
    assert runs["baseline"]["preset"]["name"] == "default"
    assert runs["baseline"]["preset"]["unet_evaluations_per_image"] == 10  # smoke: 10 steps × 0.5, guided
    fast = runs["fast"]["preset"]
    assert (fast["name"], fast["unet_steps"], fast["nominal_steps"], fast["unet_evaluations_per_image"]) == \
        ("fast", 4, 8, 4)
    assert (fast["scheduler"], fast["timestep_spacing"], fast["guidance_scale"]) == \
        ("EulerDiscreteScheduler", "trailing", 0.0)
    for name in ("baseline", "fast"):  # the bare-diffusers ratio, at each batch size
        assert _positive(report["speedup_vs_bare"][name]["1"]) and _positive(report["speedup_vs_bare"][name]["2"])
    assert _positive(report["speedup_vs_baseline"]["fast"]["1"])

    flops = report["flops"]
    assert _positive(flops["unet_forward_flops"]) and flops["unet_steps"] == 5
    assert flops["denoise_flops"] == flops["unet_forward_flops"] * 5
    assert flops["bound_s"] == pytest.approx(flops["denoise_flops"] / (flops["peak_tflops"] * 1e12))
    assert flops["latent_shape"][0] == 2  # classifier-free guidance
    for name in runs:
        assert _positive(flops["per_run"][name]["denoise_over_bound"])
    assert flops["per_run"]["fast"]["bound_s"] < flops["per_run"]["baseline"]["bound_s"]

    log = (out / "run.log").read_text(encoding="utf-8")
    for heading in ("batch 1, per stage", "throughput (images/s)", "speed-up vs the bare diffusers call",
                    "UNet FLOP bound", "speed preset of 'fast': [speed.fast] 4 UNet steps"):
        assert heading in log


def test_rehearsal_switch_steps_measure_each_switch_without_the_baseline_again(rehearsal):
    proc, out = rehearsal
    switches = json.loads((out / "switches.json").read_text(encoding="utf-8"))
    assert list(switches["runs"]) == ["fuse_qkv", "channels_last", "resolution_buckets"]
    compiled = json.loads((out / "compile.json").read_text(encoding="utf-8"))
    assert list(compiled["runs"]) == ["compile"] and compiled["runs"]["compile"]["switches"] == {"compile": True}
    for report in (switches, compiled):
        for name, run in report["runs"].items():
            assert run["switches"] == {name: True}
            assert _positive(run["batches"]["1"]["seconds"]) and _positive(run["load_s"]), name
    # the rehearsal traces claybot's whole graphs (fullgraph) but hands them to the eager backend, not inductor
    assert any("'eager' backend" in note for note in compiled["notes"])


def test_rehearsal_guides_step_reports_the_cost_per_step_of_each_guide(rehearsal):
    proc, out = rehearsal
    report = json.loads((out / "guides.json").read_text(encoding="utf-8"))
    assert report["mode"] == "smoke" and report["step_counts"] == [2, 4] and report["complete"] is True
    assert report["versions"]["torch"] and report["versions"]["diffusers"]
    assert set(report["runs"]) == {"none", "structure", "identity", "both"}
    for name, run in report["runs"].items():
        # a slope over two step counts: reported, but on a busy 2-core machine its sign is noise (no timing checks)
        assert isinstance(run["per_step_s"], float) and math.isfinite(run["per_step_s"]), name
        assert set(run["denoise_s"]) == {"2", "4"}
        assert run["steps_run"] == {"2": 2, "4": 4}, name  # the slope is over two different step counts
    assert report["per_step_ratio_to_none"]["none"] == 1.0
    log = (out / "run.log").read_text(encoding="utf-8")
    assert "structure" in log and "× none" in log


def test_every_budget_together_fits_eight_minutes(kit, tmp_path):
    plan = kit.steps(tmp_path)
    assert [s.name for s in plan] == ["build", "speed", "switches", "compile", "guides", "animate", "edit"]
    assert kit.INSTALL_BUDGET_S + sum(s.budget_s for s in plan) <= 8 * 60  # animate counted, present or not
    # a file per step not folded into run.json, run.json and run.log: what the device tool brings back
    assert len([s for s in plan if not s.folded]) + 2 <= 8
    proc = subprocess.run([sys.executable, str(KIT / "kit.py"), "--plan", "--budget", "compile=400"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "WARNING: the estimate is over 480 s" in proc.stdout  # an operator's longer budget is flagged
    refused = subprocess.run([sys.executable, str(KIT / "kit.py"), "--plan", "--only", "nonsense"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no step named nonsense" in refused.stderr


def test_a_step_past_its_budget_is_ended_with_its_children_and_keeps_what_it_wrote(kit, tmp_path):
    figure, child_pid = tmp_path / "step.json", tmp_path / "child.pid"
    script = (
        "import json, subprocess, sys, time, pathlib\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"pathlib.Path({str(child_pid)!r}).write_text(str(child.pid))\n"
        f"pathlib.Path({str(figure)!r}).write_text(json.dumps({{'seconds': 1.5}}))\n"
        "time.sleep(600)\n"
    )
    started = time.monotonic()
    rc, seconds = kit.run_step([sys.executable, "-c", script], dict(os.environ), budget_s=5)
    assert rc is None and seconds < 60 and time.monotonic() - started < 60
    assert json.loads(figure.read_text()) == {"seconds": 1.5}
    pid = int(child_pid.read_text())
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)  # the grandchild went with the step


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "gone"


# -- the wheels ---------------------------------------------------------------------------------------------------


def test_plan_carries_what_the_device_lacks_at_the_versions_installed_here(wheels):
    from importlib import metadata

    device = wheels.device_packages()
    assert device["torch"] == "2.11.0" and "transformers" in device and "diffusers" not in device
    needed, problems = wheels.plan(device)
    assert problems == []
    carried = {n.name: n.version for n in needed}
    for name in ("diffusers", "compel", "pydantic", "pydantic-core", "tomlkit"):
        assert carried[name] == metadata.version(name), name
    for name in ("torch", "transformers", "peft", "safetensors", "onnxruntime", "onnxruntime-gpu", "pillow"):
        assert name not in carried, name  # on the device already (onnxruntime-gpu: as onnxruntime, its CPU build)
    assert "av" not in carried  # 34 MiB that no step of the kit imports: left behind, within the size that travels
    assert all(name not in device for name in carried)


def _wheel(folder: Path, name: str, version: str, *requires: str) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_check_refuses_a_folder_the_device_could_not_install_or_import(wheels, tmp_path):
    device = {"torch": "2.11.0", "numpy": None}
    good = tmp_path / "good"
    good.mkdir()
    _wheel(good, "diffusers", "0.42.1", "numpy", "torch>=2.0", "importlib-metadata", 'pytest; extra == "test"',
           'tomli; python_version < "3.11"')
    _wheel(good, "importlib-metadata", "10.2.0")
    assert wheels.check(good, device) == ([], [])

    bad = tmp_path / "bad"
    bad.mkdir()
    _wheel(bad, "diffusers", "0.42.1", "torch>=2.12", "regex", "huggingface-hub>=9")
    _wheel(bad, "tomlkit", "0.15.3")
    _wheel(bad, "tomlkit", "0.13.2")
    _wheel(bad, "numpy", "2.5.2")
    _wheel(bad, "huggingface-hub", "1.0.0")
    problems, _ = wheels.check(bad, device)
    text = "\n".join(problems)
    assert "two versions of tomlkit" in text
    assert "numpy is on the device already" in text
    assert "needs torch>=2.12, the device has torch 2.11.0" in text
    assert "needs regex: neither carried nor on the device" in text
    assert "needs huggingface-hub>=9, carried: huggingface-hub 1.0.0" in text
    assert wheels.check(tmp_path / "empty", device)[0] == [f"no wheels in {tmp_path / 'empty'}"]
    assert "over the 0.0001 MiB" in "\n".join(wheels.check(good, device, limit_mib=0.0001)[0])


def test_gpu_run_without_the_wheels_says_what_to_do_and_stops(tmp_path):
    # a checkout whose .whl/ never came along (the device tool's carry forgotten)
    (tmp_path / "benchmarks" / "device").mkdir(parents=True)
    for name in ("run.sh", "kit.py"):
        target = tmp_path / "benchmarks" / "device" / name
        target.write_bytes((KIT / name).read_bytes())
        target.chmod(0o755)
    out = tmp_path / "out"
    proc = subprocess.run([str(tmp_path / "benchmarks" / "device" / "run.sh")], env={**os.environ, "OUT": str(out)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "estimate: at most" in proc.stdout  # the plan comes first, before anything can fail
    assert "no wheels in .whl/: run benchmarks/device/prepare.sh here first and carry .whl" in proc.stdout
    assert "no wheels in .whl/" in (out / "run.log").read_text(encoding="utf-8")
