"""The package's layers, as folders (core/, runner/, data/, methods/, train/, report/) and held by their
imports (module level and inside functions alike):

- the Hydra-free core (Fisher, per-sample engine, masks, masked training, selection, IRD) imports only the
  core: never the config, the run record, the runner, the methods, training or the report;
- data flows config → data → models → methods → train → runner → report, with no import back up;
- no import cycle anywhere in the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

RUNNER = {"fishtune.runner", "fishtune.runner.experiment", "fishtune.runner.launch", "fishtune.runner.overrides",
          "fishtune.runner.select_only", "fishtune.runner.resume"}
# group -> the groups its modules may import (besides their own)
ALLOWED = {
    "core": set(),
    "config": set(),
    "results": {"core"},
    "data": {"config"},
    "models": {"config"},
    "methods": {"core", "config"},
    "train": {"core", "config", "data"},
    "runner": {"core", "config", "results", "data", "models", "methods", "train"},
    "report": {"results", "core"},  # core: the mask summaries' sketches (core.mask_summary, numpy only)
    "package": {"core", "models"},  # fishtune/__init__: the library's lazy exports
}


def group(module: str) -> str:
    """A module's layer: its folder (core, data, methods, train, report), the runner's own modules, the
    runner's results (used by the report), the config schema, models, or the package itself."""
    if module == "fishtune":
        return "package"
    if module in RUNNER:
        return "runner"
    if module == "fishtune.runner.results":
        return "results"
    return module.split(".")[1]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "fishtune").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """fishtune modules ``module`` imports (``from . import x`` resolved to the submodule when it is one)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fishtune"):
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            out.update(subs or [target])
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("fishtune"))
    out.discard(module)
    return {m for m in out if m in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_module_is_in_a_known_group(graph):
    unknown = [m for m in graph if group(m) not in ALLOWED]
    assert not unknown, f"modules in no layer: {unknown}"


def test_layers_import_only_downward(graph):
    bad = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
           if group(d) != group(m) and group(d) not in ALLOWED[group(m)]
           and not (group(d) == "package" and group(m) != "core")]  # `import fishtune` for lazy exports
    assert not bad, "imports against the layers: " + "; ".join(bad)


def test_no_import_cycles(graph):
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if d == "fishtune" or d.startswith("fishtune.methods") and m == "fishtune.methods":
                continue  # a package importing its own submodules to register them is not a cycle
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d):], d]) if d in stack else f"{m} -> {d}")
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_methods_use_no_private_helper_of_another_module():
    bad = []
    for path in (SRC / "fishtune" / "methods").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad
