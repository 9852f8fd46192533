"""docs/architecture.md's module table is true, and imports flow one way (STYLE §3).

The table in the doc gives each module its layer; this test reads the code and checks that
every module is in the table with its docstring's first line and its imports, and that no
module imports from a layer above its own. ``python -m tests.test_architecture`` prints the
table as the code has it, to paste into the doc.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streamapp"
DOC = ROOT / "docs" / "architecture.md"

#: Lower layers first; a module may import from its own layer and those before it.
LAYERS = ["pure", "storage", "services", "http", "wiring"]
#: Outside the server's layers: the client imports only itself and pure modules.
CLIENT = "client"
#: No Flask below the http layer (STYLE §3: services import no Flask). Werkzeug's password
#: hashing and its exception classes are plain functions and types, with no request behind them.
WEB_PACKAGES = ("flask", "flask_login", "werkzeug")
WEB_ALLOWED = ("werkzeug.security", "werkzeug.exceptions")
ROW = re.compile(r"^\| (\w+) \| `([\w.]+)\.py` \| (\d+) \| (.*) \| (.*) \|$")


@functools.cache
def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}


def own_imports(tree: ast.Module) -> set[str]:
    """The streamapp modules a module imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def third_party(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def summary(tree: ast.Module) -> str:
    doc = ast.get_docstring(tree) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@functools.cache
def documented() -> dict[str, tuple[str, str, str]]:
    """module -> (layer, job, imports) as docs/architecture.md's table has them."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            layer, module, _lines, job, imports = match.groups()
            rows[module] = (layer, job, imports)
    return rows


def table() -> str:
    """The module table as the code has it, layers in the doc's order (top first)."""
    trees, layers = modules(), {name: row[0] for name, row in documented().items()}
    order = ["http", "wiring", "services", "storage", "pure", CLIENT, "?"]  # "?": new, give it a layer
    lines = ["| layer | module | lines | its job | imports from streamapp |", "|---|---|---|---|---|"]
    for layer in order:
        for name, tree in trees.items():
            if layers.get(name, "?") == layer:
                imports = ", ".join(sorted(own_imports(tree))) or "—"
                length = len((PACKAGE / f"{name}.py").read_text().splitlines())
                lines.append(f"| {layer} | `{name}.py` | {length} | {summary(tree)} | {imports} |")
    return "\n".join(lines)


def test_every_module_is_in_the_table_as_the_code_has_it() -> None:
    rows, trees = documented(), modules()
    assert sorted(rows) == sorted(trees), "run `python -m tests.test_architecture` and update the doc"
    for name, tree in trees.items():
        layer, job, imports = rows[name]
        assert layer in LAYERS + [CLIENT], name
        assert job == summary(tree), f"{name}: the doc's job is not the module's docstring"
        assert imports == (", ".join(sorted(own_imports(tree))) or "—"), f"{name}: imports differ from the doc"


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_flow_one_way(name: str) -> None:
    layers = {module: row[0] for module, row in documented().items()}
    layer = layers[name]
    for imported in own_imports(modules()[name]):
        theirs = layers[imported]
        if layer == CLIENT:
            assert theirs in (CLIENT, "pure") and imported == "sse" or theirs == CLIENT, (name, imported)
        elif theirs == CLIENT:
            # Only the package root re-exports the client, lazily.
            assert name == "__init__", (name, imported)
        else:
            assert LAYERS.index(theirs) <= LAYERS.index(layer), f"{name} ({layer}) imports {imported} ({theirs})"


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_flask_below_the_http_layer(name: str) -> None:
    layer = documented()[name][0]
    if layer in ("pure", "storage", "services", CLIENT):
        web = [m for m in third_party(modules()[name]) if m.split(".")[0] in WEB_PACKAGES and m not in WEB_ALLOWED]
        assert not web, f"{name} ({layer}) imports {web}"


def test_no_import_cycles() -> None:
    graph = {name: set(own_imports(tree)) for name, tree in modules().items()}
    graph.pop("__init__")  # the root re-exports; nothing imports it back
    for edges in graph.values():
        edges.discard("__init__")
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, "cycle: " + " → ".join(path[path.index(name) :] + [name])
        if name in done:
            return
        for imported in graph.get(name, ()):
            visit(imported, path + [name])
        done.add(name)

    for name in graph:
        visit(name, [])


if __name__ == "__main__":
    print(table())
