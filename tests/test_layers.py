"""The packages depend on each other in one direction, and the lazy imports stay lazy.

The core (``ppl`` without ``ppl.cli``) depends on no other package of ours:
backends (``models``) plug into it through ``ppl.lm.LM`` and engines
(``inference``) run programs through it. Engines may use backends; the
application (``ppl.cli``: the command, recipes, bench, run directories,
reports) may use everything, and nothing else imports it.

Every import statement that runs counts, including those inside functions:
a function-level import is how a cycle hides. Imports under
``if TYPE_CHECKING:`` never run and do not count.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ppl", "inference", "models")
# Which layers each layer may import (itself included).
ALLOWED = {
    "core": {"core"},
    "models": {"core", "models"},
    "inference": {"core", "models", "inference"},
    "application": {"core", "models", "inference", "application"},
}
# Third-party packages only the application uses: importing the core stays light.
APPLICATION_ONLY = ("click", "matplotlib", "tqdm")


def layer(module: str) -> str:
    if module == "ppl.cli" or module.startswith("ppl.cli."):
        return "application"
    return {"ppl": "core", "inference": "inference", "models": "models"}[module.split(".")[0]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import statement is."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from package import submodule` imports the submodule.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


@functools.cache
def import_table() -> dict[str, list[str]]:
    """Every source file's imports, parsed in a fresh interpreter.

    CPython 3.11's ``ast.parse`` can fail with "AST constructor recursion depth
    mismatch" once other tests have run in the same process.
    """
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import test_layers as t; "
        "print(json.dumps({str(p): sorted(t.imports(p)) for p in t.source_files()}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(done.stdout)


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def first_party_graph() -> nx.DiGraph:
    modules = {module_name(p): p for p in source_files()}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for imported in import_table()[str(path)]:
            if imported in modules and imported != name:
                graph.add_edge(name, imported)
    return graph


def test_every_import_points_down_the_layers():
    graph = first_party_graph()
    upward = sorted(
        f"{a} ({layer(a)}) imports {b} ({layer(b)})"
        for a, b in graph.edges
        if layer(b) not in ALLOWED[layer(a)]
    )
    assert not upward, "\n".join(upward)


def test_only_the_application_imports_click_matplotlib_and_tqdm():
    offending = sorted(
        f"{module_name(path)} imports {name}"
        for path in source_files()
        if layer(module_name(path)) != "application"
        for name in import_table()[str(path)]
        if name.split(".")[0] in APPLICATION_ONLY
    )
    assert not offending, "\n".join(offending)


def test_core_modules_form_no_import_cycle():
    # Edges into a package's own __init__ only say "import the package first".
    graph = first_party_graph()
    core = graph.subgraph(n for n in graph if layer(n) == "core" and n != "ppl")
    cycles = [sorted(c) for c in nx.strongly_connected_components(core) if len(c) > 1]
    assert not cycles, cycles


CHECK = """
import json, sys
def loaded(*roots):
    return sorted(m for m in sys.modules if m.split(".")[0] in roots or m.startswith("ppl.cli"))
report = {}
import ppl
report["ppl"] = loaded("inference", "click", "matplotlib")
import ppl.runtime
report["ppl.runtime"] = loaded("inference")
import inference
report["inference"] = loaded("matplotlib")
import models
report["models"] = loaded("matplotlib")
ppl.smc  # the lazy re-export resolves
report["after ppl.smc"] = loaded("matplotlib")
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def loaded_modules() -> dict[str, list[str]]:
    """What each import loaded, in a fresh interpreter (imports are cumulative)."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", ["ppl", "ppl.runtime", "inference", "models", "after ppl.smc"])
def test_importing_a_layer_loads_nothing_above_it(loaded_modules, module):
    assert loaded_modules[module] == []


def test_ppl_reexports_the_engines_lazily():
    import inference
    import ppl

    for name in ("smc", "importance", "beam", "mh", "run", "AnswerSets", "svi"):
        assert name in dir(ppl) and name in ppl.__all__
        assert getattr(ppl, name) is getattr(inference, name)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        ppl.nonsense  # noqa: B018
