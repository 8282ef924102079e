"""The code's layering stays clean: no import cycle between modules or between layers,
``derm_exp/errors.py`` depends on nothing of derm_exp, no function over 80 lines.

Checked statically (see :mod:`tests.layer_check`). The full report, every rule at once::

    python -m tests.test_import_layers      # exit status 1 when a rule is broken

or ``pytest tests/test_import_layers.py``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests.layer_check import (
    Graph,
    find_cycles,
    format_cycles,
    import_graph,
    layer_graph,
    long_functions,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("derm_exp", "hydra_plugins")
MAX_FUNCTION_LINES = 80


def module_cycles_problem(graph: Graph) -> str | None:
    cycles = find_cycles(graph)
    if not cycles:
        return None
    return f"{len(cycles)} import cycle(s) between modules:\n" + format_cycles(cycles, graph)


def layer_cycles_problem(graph: Graph) -> str | None:
    layers = layer_graph(graph)
    cycles = find_cycles(layers)
    if not cycles:
        return None
    return (
        f"{len(cycles)} import cycle(s) between layers (subpackages and top-level modules):\n"
        + format_cycles(cycles, layers)
    )


def errors_module_problem(graph: Graph) -> str | None:
    imported = sorted(w for m, where in graph["derm_exp.errors"].items() for w in where)
    if not imported:
        return None
    return "derm_exp/errors.py must import nothing of derm_exp:\n" + "\n".join(
        f"  {where}" for where in imported
    )


def long_functions_problem() -> str | None:
    found = long_functions(ROOT, ["derm_exp"], MAX_FUNCTION_LINES)
    if not found:
        return None
    return f"{len(found)} function(s) over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(
        f"  {f}" for f in found
    )


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT, SOURCES)


def test_no_import_cycle_between_modules(graph: Graph) -> None:
    problem = module_cycles_problem(graph)
    assert problem is None, problem


def test_no_import_cycle_between_layers(graph: Graph) -> None:
    problem = layer_cycles_problem(graph)
    assert problem is None, problem


def test_errors_module_imports_nothing_of_derm_exp(graph: Graph) -> None:
    problem = errors_module_problem(graph)
    assert problem is None, problem


def test_no_function_over_80_lines() -> None:
    problem = long_functions_problem()
    assert problem is None, problem


def test_explanations_sit_above_inference_and_below_training(graph: Graph) -> None:
    layers = layer_graph(graph)
    assert "derm_exp.inference" in layers["derm_exp.explanations"]
    assert not {"derm_exp.training", "derm_exp.tuning"} & set(layers["derm_exp.explanations"])


def test_service_sits_above_inference_and_explanations_and_below_training(graph: Graph) -> None:
    layers = layer_graph(graph)
    assert "derm_exp.inference" in layers["derm_exp.service"]
    assert not {"derm_exp.training", "derm_exp.tuning"} & set(layers["derm_exp.service"])
    assert "derm_exp.service" in layers["derm_exp.serve"]


# --- the checker itself, on small made-up packages -------------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import os\nfrom pkg.b import helper\n",
            "pkg/b.py": "def helper():\n    from . import c\n",
            "pkg/c.py": "from .a import thing\n",
            "pkg/d.py": "import pkg.a\n",  # into the cycle, not on it
        },
    )
    graph = import_graph(root, ["pkg"])
    assert graph["pkg.b"] == {"pkg.c": ["pkg/b.py:2 imports pkg.c"]}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    report = format_cycles(find_cycles(graph), graph)
    assert "pkg.a -> pkg.b -> pkg.c -> pkg.a" in report
    assert "pkg/b.py:2 imports pkg.c" in report


def test_checker_passes_a_clean_tree_and_resolves_relative_imports(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.sub import f\n",
            "pkg/base.py": "import json\n",
            "pkg/sub/__init__.py": "from .y import f\n",
            "pkg/sub/y.py": "from ..base import x\nfrom .. import base\n",
            "pkg/sub/z.py": "from pkg.sub import y\nfrom pkg.sub import f\n",
        },
    )
    graph = import_graph(root, ["pkg"])
    assert {module: set(targets) for module, targets in graph.items()} == {
        "pkg": {"pkg.sub"},
        "pkg.base": set(),
        "pkg.sub": {"pkg.sub.y"},
        "pkg.sub.y": {"pkg.base"},
        "pkg.sub.z": {"pkg.sub.y", "pkg.sub"},
    }
    assert graph["pkg.sub.y"]["pkg.base"] == [
        "pkg/sub/y.py:1 imports pkg.base",
        "pkg/sub/y.py:2 imports pkg.base",
    ]
    assert find_cycles(graph) == []
    assert find_cycles(layer_graph(graph)) == []


def test_checker_finds_a_cycle_between_layers_without_a_module_cycle(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "pkg/data/load.py": "from pkg.models import net\n",
            "pkg/models/net.py": "",
            "pkg/models/fit.py": "from pkg.data import load\n",
            "pkg/train.py": "from pkg.models import fit\n",
        },
    )
    graph = import_graph(root, ["pkg"])
    assert find_cycles(graph) == []
    assert find_cycles(layer_graph(graph)) == [["pkg.data", "pkg.models", "pkg.data"]]


def test_checker_finds_long_functions(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    root = write_tree(
        tmp_path,
        {
            "pkg/m.py": f"def fits():\n{body}\n\nclass C:\n    @staticmethod\n"
            f"    def too_long():\n{textwrap.indent(body, '    ')}        return 1\n",
        },
    )
    assert long_functions(root, ["pkg"], 80) == ["pkg/m.py:85 C.too_long: 81 lines"]


def main() -> int:
    graph = import_graph(ROOT, SOURCES)
    problems = [
        module_cycles_problem(graph),
        layer_cycles_problem(graph),
        errors_module_problem(graph),
        long_functions_problem(),
    ]
    problems = [p for p in problems if p is not None]
    print("\n\n".join(problems) if problems else "layers clean: no import cycle, no long function")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
