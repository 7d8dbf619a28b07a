"""The process boundary in the tree: everything the chat process imports stays free of the GPU libraries."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(__file__))
GPU_LIBRARIES = ("torch", "diffusers", "transformers", "onnxruntime", "compel")


def chat_side_modules() -> list[str]:
    """Every module of bot/, cogs/ and pipeline/core/, found on disk so a new module is checked too."""
    names = []
    for package in ("bot", "cogs", "pipeline.core"):
        folder = os.path.join(ROOT, *package.split("."))
        names += [f"{package}.{info.name}" for info in pkgutil.iter_modules([folder])]
    return names


def test_importing_every_chat_side_module_loads_no_gpu_library():
    modules = chat_side_modules()
    assert "bot.flow" in modules and "pipeline.core.jobs" in modules and "cogs.clay" in modules
    script = textwrap.dedent(f"""
        import importlib, json, sys
        for name in {modules!r}:
            importlib.import_module(name)
        print(json.dumps([m for m in {GPU_LIBRARIES!r} if m in sys.modules]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_torch_free_core_never_imports_the_gpu_half_at_module_level():
    core = os.path.join(ROOT, "pipeline", "core")
    for name in sorted(os.listdir(core)):
        if name.endswith(".py"):
            with open(os.path.join(core, name), encoding="utf-8") as f:
                top_level = [line for line in f if line.startswith(("import ", "from "))]
            assert not [line for line in top_level if "pipeline.gpu" in line], name


def test_the_torch_free_core_names_no_gpu_library_even_inside_a_function():
    # A lazy `import torch` in pipeline/core would load it into the chat process the first time that path runs.
    import ast

    core = os.path.join(ROOT, "pipeline", "core")
    found = []
    for name in sorted(os.listdir(core)):
        if name.endswith(".py"):
            with open(os.path.join(core, name), encoding="utf-8") as f:
                tree = ast.parse(f.read(), name)
            for node in ast.walk(tree):
                modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{name}:{node.lineno} {m}" for m in modules if m.split(".")[0] in GPU_LIBRARIES]
    assert found == []
