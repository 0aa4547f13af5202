"""The house rules of ARCHITECTURE.md, checked on the source: imports point down only (no
cycle between modules, the ground floor imports no stage), no module imports another's
private name, no function over 60 lines, and a module over 300 lines says why at its top."""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import REPO_ROOT

STAGES = {
    "sampleiqa.build": "build",
    "sampleiqa.clients": "clients",
    "sampleiqa.training": "training",
    "sampleiqa.perf": "perf",
    "sampleiqa.deploy": "deploy",
}
# sampleiqa/runtime/ runs inside Triton and is vendored into repositories whole, so it imports
# nothing from the project outside itself, but for these (importer, imported) pairs:
RUNTIME_EXCEPTIONS = {
    # the gpu-torch scorer runs the training checkpoint's network (a gpu-torch repository needs sampleiqa installed)
    ("sampleiqa.runtime.triton_models.scorer_torch", "sampleiqa.build.torch_runner"),
}
FOLDERS = {
    "build": "sampleiqa.build",
    "clients": "sampleiqa.clients",
    "training": "sampleiqa.training",
    "perf": "sampleiqa.perf",
    "deploy": "sampleiqa.deploy",
    "sampleiqa": "sampleiqa",
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (REPO_ROOT / folder).rglob("*.py"):
            rel = path.relative_to(REPO_ROOT / folder).with_suffix("")
            if "results" in rel.parts:  # one-off study scripts
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported module, imported name) pairs, module level and inside functions alike."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in modules else base), alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""


def test_imports_point_down_and_skip_no_private_names():
    modules = _modules()
    edges, private = {}, []
    for name, path in modules.items():
        for target, imported in _imports(name, path, modules):
            if target in modules and target != name:
                edges.setdefault(name, set()).add(target)
            if imported.startswith("_") and not imported.startswith("__") and target.startswith("sampleiqa"):
                private.append(f"{name}: {target}.{imported}")
    assert not private, private
    # The ground floor imports no stage (the CLI finds the stages' commands by name at run time).
    ground = [
        (a, b)
        for a, bs in edges.items()
        for b in bs
        if not any(a.startswith(s) for s in STAGES)
        and any(b.startswith(s) for s in STAGES)
        and (a, b) not in RUNTIME_EXCEPTIONS
    ]
    assert not ground, ground
    # No cycle: a depth-first search over the module graph.
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            assert state.get(nxt) != 1, " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in modules:
        if node not in state:
            visit(node, [node])


def test_runtime_imports_only_itself():
    """What runs inside Triton (sampleiqa/runtime/) imports nothing else from the project:
    absolute or relative, at module level or inside a function; RUNTIME_EXCEPTIONS names the
    one pair that may."""
    modules = _modules()
    outside = sorted(
        (name, target)
        for name, path in modules.items()
        if name.startswith("sampleiqa.runtime")
        for target, _ in _imports(name, path, modules)
        if (target == "sampleiqa" or target.startswith("sampleiqa."))
        and not (target == "sampleiqa.runtime" or target.startswith("sampleiqa.runtime."))
    )
    assert set(outside) <= RUNTIME_EXCEPTIONS, sorted(set(outside) - RUNTIME_EXCEPTIONS)
    assert RUNTIME_EXCEPTIONS <= set(outside), "an exception no longer needed: remove it"


def test_functions_are_short_and_long_modules_say_why():
    long_functions, unexplained = [], []
    for name, path in _modules().items():
        text = path.read_text()
        tree = ast.parse(text)
        long_functions += [
            f"{name}.{n.name}: {n.end_lineno - n.lineno + 1} lines"
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 60
        ]
        if text.count("\n") > 320 and "300 lines" not in (ast.get_docstring(tree) or ""):
            unexplained.append(name)
    assert not long_functions, long_functions
    assert not unexplained, unexplained
