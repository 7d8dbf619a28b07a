"""The GPU run kit's driver: each benchmark step in its own process under its own time budget (run.sh calls it).

    python benchmarks/device/kit.py --plan                      # the steps, their budgets and the estimate
    python benchmarks/device/kit.py --out out/device            # run them (on the device, after run.sh's install)
    python benchmarks/device/kit.py --smoke --out /tmp/kit      # the same steps on the tiny models, on the CPU
    python benchmarks/device/kit.py --only compile --budget compile=300 --out out/device   # a rerun of one step

Each step writes its own JSON file into --out as soon as it has a figure (the benchmarks rewrite theirs after each
configuration), and run.json records the machine, the versions and each step's outcome after every step: a step cut
short by its budget keeps what it finished, and the steps before it keep theirs. Only the standard library is
imported here, so the plan prints before anything is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
LIMIT_S = 480  # the estimate must fit 8 minutes: a 15-minute device lease holds a machine start and one rerun
INSTALL_BUDGET_S = 40  # run.sh's wheel install (its own timeout) and import check, before this driver starts
# The CPU rehearsal's budget for every step: importing torch and diffusers alone takes 6 s of CPU per process, and a
# shared 2-core machine runs it several times slower. Generous: a step that hangs still ends.
SMOKE_BUDGET_S = 300
MODELS_DIR = Path(os.environ.get("CLAYBOT_KIT_MODELS", "/tmp/claybot-models"))  # the device's disk, not $OUT


@dataclass(frozen=True)
class Step:
    """One benchmark process: its output file, its time budget on an H100/H200, and its arguments."""

    name: str
    budget_s: int
    what: str
    full: list[str]
    smoke: list[str]
    script: str = ""  # a script that may not exist yet: the step is skipped without it
    folded: bool = False  # its figures go into run.json, not a file of its own (the device tool brings back 8 files)

    @property
    def out(self) -> str:
        return f"{self.name}.json"


def steps(models: Path) -> list[Step]:
    """The kit's steps, in the order they run."""
    tiny = ["--tiny-models", str(models / "tiny")]
    full = ["--full", "--models-dir", str(models)]
    speed = "benchmarks/gpu_speed.py"
    switches = ["--switch", "fuse_qkv", "--switch", "channels_last", "--switch", "resolution_buckets"]
    return [
        Step("build", 60, "random-weight models: SDXL base, WD14, LoRAs, guides (reused when already built)",
             ["benchmarks/device/build_models.py", "--models-dir", str(models)],
             ["benchmarks/device/build_models.py", "--smoke", "--models-dir", str(models)], folded=True),
        Step("speed", 90, "claybot's baseline and [speed.fast] preset beside a bare diffusers call, batch 1 and 4",
             [speed, *full, "--switch", "fast", "--batches", "1,4"],
             [speed, "--smoke", *tiny, "--switch", "fast", "--batches", "1,2", "--repeats", "1"]),
        Step("switches", 60, "each cheap speed switch alone (fuse_qkv, channels_last, resolution_buckets), batch 1",
             [speed, *full, "--no-baseline", "--no-bare", *switches, "--batches", "1"],
             [speed, "--smoke", *tiny, "--no-baseline", "--no-bare", *switches, "--batches", "1", "--repeats", "1"]),
        Step("compile", 70, "torch.compile (max-autotune), batch 1; its first call holds the compiling",
             [speed, *full, "--no-baseline", "--no-bare", "--switch", "compile", "--batches", "1"],
             # the CPU rehearsal traces the whole graphs as claybot asks, without inductor's minutes of compiling
             [speed, "--smoke", *tiny, "--no-baseline", "--no-bare", "--switch", "compile", "--compile",
              "--compile-backend", "eager", "--batches", "1", "--repeats", "1"]),
        Step("guides", 60, "each guide's cost per denoising step and per call, full size",
             ["benchmarks/guides_cost.py", *full, "--steps", "4,12", "--repeats", "2"],
             ["benchmarks/guides_cost.py", "--smoke", *tiny, "--steps", "2,4", "--repeats", "1"]),
        Step("animate", 50, "the clay animation benchmark", ["benchmarks/animate_speed.py"],
             ["benchmarks/animate_speed.py", "--smoke"], script="benchmarks/animate_speed.py"),
        Step("edit", 50, "the edit engine: FLUX.2 [klein] 4B at 1024², 4 steps, beside speed.json's SDXL figures",
             ["benchmarks/edit_speed.py", "--full"], ["benchmarks/edit_speed.py", "--smoke"]),
    ]


def _budgets(argument: list[str]) -> dict[str, int]:
    out = {}
    for item in argument:
        name, _, seconds = item.partition("=")
        if not seconds.isdigit() or int(seconds) <= 0:
            raise SystemExit(f"kit: --budget wants NAME=SECONDS, got {item!r}")
        out[name] = int(seconds)
    return out


def host_facts() -> dict[str, object]:
    """What ran the kit: the GPU (nvidia-smi; no CUDA context held here), Python and the libraries' versions."""
    facts: dict[str, object] = {"python": platform.python_version(), "machine": platform.machine()}
    # the last ones: needs of the carried wheels whose versions the device's package list does not give
    for name in ("torch", "diffusers", "transformers", "peft", "onnxruntime", "onnxruntime-gpu", "compel",
                 "pydantic", "pillow", "typing-extensions", "httpx", "aiohttp", "regex", "requests", "pyparsing"):
        try:
            facts[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            facts[name] = None
    gpu = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        try:
            lines = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            if lines:
                name, driver, memory = (part.strip() for part in lines[0].split(","))
                gpu = {"name": name, "driver": driver, "memory": memory, "count": len(lines)}
        except (OSError, subprocess.SubprocessError, ValueError):
            gpu = None
    facts["gpu"] = gpu
    return facts


def run_step(command: list[str], env: dict[str, str], budget_s: int) -> tuple[int | None, float]:
    """Run one step in its own process group; at its budget end the whole group. → (exit status or None, seconds)."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        rc: int | None = process.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        rc = None
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)  # the step's compile workers and loaders too
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    except BaseException:  # the driver itself stopped (Ctrl-C, the device call's limit): take the step along
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return rc, time.monotonic() - started


def print_plan(plan: list[Step], budgets: dict[str, int], smoke: bool) -> int:
    """Print each step's budget and the estimate (their sum, install included); → the estimate in seconds."""
    print("claybot GPU run kit — " + (f"smoke rehearsal on the CPU (each step up to {SMOKE_BUDGET_S} s here; "
                                      "below, the GPU run's budgets)" if smoke else "GPU run"))
    total = INSTALL_BUDGET_S
    print(f"  {'install':<10} {INSTALL_BUDGET_S:>4} s  the wheels into /tmp/site, an import check (run.sh)")
    for step in plan:
        missing = step.script and not (ROOT / step.script).is_file()
        seconds = 0 if missing else budgets.get(step.name, step.budget_s)
        total += seconds
        note = f"skipped: no {step.script} yet" if missing else step.what
        print(f"  {step.name:<10} {seconds:>4} s  {note}")
    print(f"estimate: at most {total} s ({total / 60:.1f} min) on an H100/H200; each step is stopped at its budget")
    if total > LIMIT_S:
        print(f"kit: WARNING: the estimate is over {LIMIT_S} s: a 15-minute lease leaves no room for a rerun")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the tiny models on the CPU, local environment")
    parser.add_argument("--plan", action="store_true", help="print the steps and the estimate, run nothing")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out/device"))
    parser.add_argument("--only", default="", help="comma list of steps to run (e.g. a rerun of one)")
    parser.add_argument("--budget", action="append", default=[], help="NAME=SECONDS: another budget for a step")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help=f"where the models are built (default {MODELS_DIR}; smoke: a scratch folder)")
    parser.add_argument("--installed-in", type=float, default=None, help="run.sh: seconds its install took")
    parser.add_argument("--planned", action="store_true", help="run.sh printed the plan already")
    args = parser.parse_args(argv)
    budgets = _budgets(args.budget)
    scratch = Path(tempfile.mkdtemp(prefix="claybot-kit-")) if args.smoke and args.models_dir is None else None
    models = args.models_dir or scratch or MODELS_DIR
    plan = steps(models)
    names = [s.name for s in plan]
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in [*only, *budgets] if n not in names]
    if unknown:
        print(f"kit: no step named {', '.join(unknown)} (steps: {', '.join(names)})", file=sys.stderr)
        return 2
    if only:
        plan = [s for s in plan if s.name in only]
    with contextlib.redirect_stdout(io.StringIO()) if args.planned else contextlib.nullcontext():
        estimate = print_plan(plan, budgets, args.smoke)
    if args.plan:
        return 0
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {
        "kit": "claybot GPU run kit", "mode": "smoke" if args.smoke else "full",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "host": host_facts(),
        "estimate_s": estimate, "install_s": args.installed_in, "steps": {},
    }
    step_records: dict[str, dict[str, object]] = record["steps"]  # type: ignore[assignment]
    failed = 0
    try:
        for step in plan:
            budget = budgets.get(step.name, SMOKE_BUDGET_S if args.smoke else step.budget_s)
            entry: dict[str, object] = {"budget_s": budget, "json": step.out}
            step_records[step.name] = entry
            if step.script and not (ROOT / step.script).is_file():
                entry["status"] = f"skipped: no {step.script}"
                _save(out / "run.json", record)
                continue
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            command = [sys.executable, *(step.smoke if args.smoke else step.full), "--json", str(out / step.out)]
            print(f"\n== {step.name} (budget {budget} s): {' '.join(command[1:])}", flush=True)
            rc, seconds = run_step(command, env, budget)
            for partial in out.glob("*.part"):  # a write cut by the budget: the last whole file stays
                partial.unlink(missing_ok=True)
            status = "ok" if rc == 0 else "timed out" if rc is None else f"failed (exit {rc})"
            entry.update(status=status, seconds=round(seconds, 1), wrote=(out / step.out).is_file())
            if step.folded and (out / step.out).is_file():
                entry["figures"] = json.loads((out / step.out).read_text(encoding="utf-8"))
                entry["json"] = "run.json"
                (out / step.out).unlink()
            failed += status != "ok"
            print(f"== {step.name}: {status} in {seconds:.1f} s", flush=True)
            _save(out / "run.json", record)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    _save(out / "run.json", record)
    ran = [e for e in step_records.values() if not str(e.get("status", "")).startswith("skipped")]
    print(f"\nkit: {len(ran) - failed} of {len(ran)} steps ok ({len(plan) - len(ran)} skipped); figures in {out}")
    return 1 if failed else 0


def _save(path: Path, record: dict[str, object]) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(record, indent=2), encoding="utf-8")
    partial.replace(path)


if __name__ == "__main__":
    sys.exit(main())
