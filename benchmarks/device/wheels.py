"""Which wheels the device machine lacks for claybot, and whether a folder of them is complete (prepare.sh's logic).

    python benchmarks/device/wheels.py plan            # NAME==VERSION per line: what to download
    python benchmarks/device/wheels.py check .whl      # every need covered, one version each, size within limit

The plan starts from the project's runtime dependencies (pyproject.toml), follows each installed distribution's
Requires-Dist (markers evaluated for CPython 3.12 on x86-64 Linux, as on the device) and keeps what the device's
image lacks (device-packages.txt). Versions are the ones this environment has installed: the versions the test
suite passes with. Run it with the project's own interpreter (.venv/bin/python), which has them installed.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent.parent
DEVICE_LIST = Path(__file__).resolve().parent / "device-packages.txt"
LIMIT_MIB = 40  # of the 64 MiB that travel: the working tree (about 1 MiB) and room to spare

# The device's Python, for Requires-Dist markers (KINDS.md: Python 3.12.3, x86-64 Linux).
DEVICE_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "implementation_version": "3.12.3", "platform_python_implementation": "CPython", "os_name": "posix",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "platform_release": "",
    "platform_version": "", "extra": "",
}

# A project dependency the device satisfies under another name: the device's onnxruntime (CPU build) provides the
# same `onnxruntime` module as onnxruntime-gpu (a 280 MB wheel that could not travel). The tagger then runs on the
# CPU there; the benchmarks report the providers it used.
PROVIDED_AS = {"onnxruntime-gpu": "onnxruntime"}
# Dependencies the kit's steps never import, left behind to stay within the size that travels: PyAV (a 34 MiB wheel)
# encodes MP4s, which the animation step does not time (it runs animate_speed.py without --encode).
LEFT_BEHIND = {"av": "MP4 encoding, not timed by the kit"}


@dataclass(frozen=True)
class Needed:
    """One distribution to carry, and who asked for it."""

    name: str
    version: str
    wanted_by: str


def device_packages(path: Path = DEVICE_LIST) -> dict[str, str | None]:
    """The device's packages: canonical name → version (None where the list gives none)."""
    out: dict[str, str | None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        out[canonicalize_name(name)] = version or None
    return out


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """The project's runtime dependencies (not its test extras)."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return [Requirement(text) for text in data["project"]["dependencies"]]


def applies(requirement: Requirement) -> bool:
    """Whether a requirement holds on the device's Python (no extras asked for)."""
    return requirement.marker is None or requirement.marker.evaluate(DEVICE_ENV)


def _requires(dist: metadata.Distribution) -> list[Requirement]:
    return [r for r in (Requirement(text) for text in (dist.requires or [])) if applies(r)]


def plan(device: dict[str, str | None]) -> tuple[list[Needed], list[str]]:
    """What to carry (name, installed version, who needs it) and the problems found (empty when none)."""
    needed: dict[str, Needed] = {}
    problems: list[str] = []
    queue = [(r, "pyproject.toml") for r in project_requirements() if applies(r)]
    seen: set[str] = set()
    while queue:
        requirement, wanted_by = queue.pop(0)
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        provided = PROVIDED_AS.get(name, name)
        if provided in device or name in LEFT_BEHIND:
            continue  # the device's own; its version is checked against every need in check()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} (needed by {wanted_by}) is not installed here: install the project first")
            continue
        needed[name] = Needed(name, dist.version, wanted_by)
        queue += [(r, name) for r in _requires(dist)]
    return sorted(needed.values(), key=lambda n: n.name), problems


def _wheel_metadata(path: Path) -> email.message.Message:
    with zipfile.ZipFile(path) as wheel:
        (member,) = [n for n in wheel.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        return email.parser.Parser().parsestr(wheel.read(member).decode("utf-8"))


def check(folder: Path, device: dict[str, str | None], limit_mib: float = LIMIT_MIB) -> tuple[list[str], list[str]]:
    """(problems, notes) for a folder of wheels: each need covered, one version per name, total size in limit."""
    problems: list[str] = []
    notes: list[str] = []
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return [f"no wheels in {folder}"], notes
    carried: dict[str, tuple[str, list[Requirement]]] = {}
    for path in wheels:
        meta = _wheel_metadata(path)
        name = canonicalize_name(meta["Name"])
        if name in carried:
            problems.append(f"two versions of {name}: {carried[name][0]} and {meta['Version']} (pip would refuse)")
        if name in device:
            problems.append(f"{name} is on the device already: carrying it would shadow the device's own")
        requires = [r for r in (Requirement(t) for t in meta.get_all("Requires-Dist") or []) if applies(r)]
        carried[name] = (meta["Version"], requires)
    for carrier, (_version, requires) in carried.items():
        for requirement in requires:
            dep = canonicalize_name(requirement.name)
            spec = SpecifierSet(str(requirement.specifier))
            if dep in carried:
                if not spec.contains(Version(carried[dep][0]), prereleases=True):
                    problems.append(f"{carrier} needs {requirement}, carried: {dep} {carried[dep][0]}")
            elif dep in device:
                have = device[dep]
                if have is None:
                    if str(spec):
                        notes.append(f"{carrier} needs {requirement}: the device has {dep}, version not listed")
                elif not spec.contains(Version(have), prereleases=True):
                    problems.append(f"{carrier} needs {requirement}, the device has {dep} {have}")
            else:
                problems.append(f"{carrier} needs {requirement}: neither carried nor on the device")
    total = sum(p.stat().st_size for p in wheels)
    if total > limit_mib * 2**20:
        problems.append(f"{total / 2**20:.1f} MiB of wheels: over the {limit_mib:g} MiB this kit allows itself")
    return problems, notes


def _size_table(folder: Path) -> str:
    wheels = sorted(folder.glob("*.whl"))
    rows = [f"  {p.stat().st_size / 2**20:7.2f} MiB  {p.name}" for p in wheels]
    total = sum(p.stat().st_size for p in wheels)
    return "\n".join([*rows, f"  {total / 2**20:7.2f} MiB  in all, {len(wheels)} wheels (limit {LIMIT_MIB} MiB)"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plan", help="print NAME==VERSION for each wheel to download")
    checking = sub.add_parser("check", help="check a folder of wheels and print their sizes")
    checking.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    device = device_packages()
    if args.command == "plan":
        needed, problems = plan(device)
        for problem in problems:
            print(f"wheels: {problem}", file=sys.stderr)
        for n in needed:
            print(f"{n.name}=={n.version}")
            print(f"  {n.name} {n.version}: needed by {n.wanted_by}", file=sys.stderr)
        return 1 if problems else 0
    problems, notes = check(args.folder, device)
    print(_size_table(args.folder))
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"wheels: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
