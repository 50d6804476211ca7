"""The layout's rules, read from the source's imports (docs/architecture.md, "Where the code
lives"): no import circle, not even one made only for type checking; the listener's and the
workers' modules never import each other; the shared modules at the top import neither
(the command line alone dispatches to them, inside its commands); and no module grows past
400 lines (a module that long does more than one job: split it by what it does)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

RELAY = ROOT / "relay"
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every relay module → the relay modules it imports, wherever the import statement is
    (inside a function or under ``if TYPE_CHECKING:`` too)."""
    modules = {_module(path): path for path in RELAY.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # ``from relay import bus`` imports the module relay.bus.
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t if t in modules else node.module for t in targets]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found - {"relay"}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_of_relay_imports_itself_around_a_circle() -> None:
    cycle = _cycle(_imports())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_listener_and_the_workers_never_import_each_other() -> None:
    graph = _imports()
    crossing = [(source, target) for source, targets in graph.items() for target in targets
                if (source.startswith("relay.listener.") and target.startswith("relay.worker."))
                or (source.startswith("relay.worker.") and target.startswith("relay.listener."))]
    assert crossing == []


def test_the_shared_modules_depend_on_no_process_package() -> None:
    graph = _imports()
    packages = ("relay.listener.", "relay.worker.", "relay.dev.")
    shared = [name for name in graph if name.count(".") == 1 and name != "relay.cli"]
    leaking = [(source, target) for source in shared for target in graph[source]
               if target.startswith(packages)]
    assert leaking == []


def test_the_checks_see_the_imports_they_are_about() -> None:
    graph = _imports()
    assert "relay.worker.node" in graph["relay.worker.connection"]  # a module-level import
    assert "relay.bus" in graph["relay.listener.server"]  # ``from relay import bus``
    assert "relay.listener.server" in graph["relay.cli"]  # an import inside a function


def _long_modules(root: Path = RELAY) -> dict[str, int]:
    lines = {str(path.relative_to(root)): len(path.read_text().splitlines())
             for path in sorted(root.rglob("*.py"))}
    return {path: count for path, count in lines.items() if count > MAX_LINES}


def test_no_module_of_relay_is_longer_than_400_lines() -> None:
    assert _long_modules() == {}


def test_the_length_check_finds_a_module_of_401_lines_in_a_subpackage(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * 401)
    (tmp_path / "short.py").write_text("x = 1\n" * 400)
    assert _long_modules(tmp_path) == {"pkg/long.py": 401}
