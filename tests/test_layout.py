"""The package layout as the README's Development section states it: one subpackage per concern, dependencies
that point one way, no import cycles between modules, and ``nnunet_poolskip.nn`` usable without nnU-Net.

Imports are read from the source (module level and inside functions alike), so a lazy import that breaks the
rule is caught too."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_poolskip"

# subpackage -> the subpackages of ours it may import (besides itself); the README states the same rule
ALLOWED = {
    "utilities": set(),
    "nn": set(),
    "evaluation": {"utilities"},
    "dataset_conversion": {"utilities"},
    "inference": {"utilities"},
    "diagnostics": {"nn", "utilities"},
    "training": {"nn", "diagnostics", "utilities", "ext_trainers", "plans_presets"},
    "benchmark": {"nn", "diagnostics", "utilities", "training", "evaluation", "dataset_conversion", "inference"},
    "commands": {"nn", "diagnostics", "utilities", "training", "evaluation", "dataset_conversion", "inference",
                 "benchmark", ""},  # "": the package itself, for __version__
}
TOP_LEVEL_MODULES = {"__init__.py", "cli.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Set[str]:
    """Our modules that ``path`` imports anywhere in its code (``from pkg import mod`` counts as ``pkg.mod``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("nnunet_poolskip")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunet_poolskip"):
            found.add(node.module)
            for alias in node.names:  # a submodule imported by name
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").is_file() or \
                        (PACKAGE.parent / candidate.replace(".", "/") / "__init__.py").is_file():
                    found.add(candidate)
    return found


def module_graph() -> Dict[str, Set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def concern(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_top_of_the_package_holds_only_the_entry_points():
    assert {p.name for p in PACKAGE.glob("*.py")} == TOP_LEVEL_MODULES
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ALLOWED)


def test_dependencies_point_one_way():
    violations = []
    for module, imported in module_graph().items():
        own = concern(module)
        if own not in ALLOWED:  # the package's __init__ and cli.py
            continue
        for target in imported:
            other = concern(target)
            if other != own and other not in ALLOWED[own]:
                violations.append(f"{module} imports {target}")
    assert violations == []


def test_no_import_cycles_between_modules():
    graph = module_graph()
    state: Dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_nn_imports_no_nnunet():
    code = ("import sys, nnunet_poolskip.nn as n; "
            "assert {'PoolSkip1d', 'PoolSkip2d', 'PoolSkip3d', 'inject_pool_skip'} <= set(n.__all__); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'nnunetv2'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_env_command_does_not_import_the_trainers():
    """``eval "$(nnunet-poolskip env)"`` runs in shell profiles and job scripts: it must not load nnU-Net."""
    code = ("import sys; from nnunet_poolskip.cli import main; main(['env']); "
            "print('nnunetv2' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("export nnUNet_extTrainer=") and result.stderr.strip() == "False"
