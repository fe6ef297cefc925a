"""The sync package's modules import one way: no cycle, lazy (function-level) imports included."""
import ast
from pathlib import Path

SYNC = Path(__file__).resolve().parents[2] / "sync"


def imports_of(path: Path) -> set[str]:
    """The sync modules a module imports (relative imports anywhere in it, in functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return found


def test_no_module_of_sync_imports_itself_through_others():
    modules = {p.stem: p for p in SYNC.glob("*.py")}
    graph = {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", " -> ".join(trail + [dep])
            if dep not in state:
                visit(dep, trail + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # The rooms the runs are built from, bottom first: holding a subscription, then the fan-in, then the workers.
    assert "run_end" in graph["group_sync"] and "run_end" in graph["changes"]
    assert not graph["run_lock"] & {"runs", "run_end", "group_sync", "changes", "subscriptions"}
    assert not graph["run_end"] & {"runs", "group_sync", "changes", "subscriptions"}
