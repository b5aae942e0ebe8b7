"""The design's import rules, read from the source: loadtest never imports agent; pages launch nothing themselves."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_loadtest_module_imports_agent() -> None:
    files = sorted((ROOT / "loadtest").glob("*.py"))
    assert files
    offenders = {f.name: sorted(m for m in _imports(f) if m == "agent" or m.startswith("agent."))
                 for f in files}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_agent_module_imports_loadtest() -> None:
    files = sorted((ROOT / "agent").rglob("*.py"))
    offenders = {str(f.relative_to(ROOT)): [m for m in _imports(f) if m.split(".")[0] == "loadtest"] for f in files}
    assert not {k: v for k, v in offenders.items() if v}


def test_runs_imports_none_of_the_packages_above_it() -> None:
    above = {"agent", "loadtest", "tuning", "dashboard", "streamlit"}
    offenders = {f.name: [m for m in _imports(f) if m.split(".")[0] in above] for f in (ROOT / "runs").glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_page_starts_processes_or_builds_a_command_line() -> None:
    pages = sorted((ROOT / "dashboard" / "pages").glob("*.py"))
    assert pages
    for page in pages:
        imports = _imports(page)
        assert "subprocess" not in imports, page.name
        tree = ast.parse(page.read_text())
        called = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                  for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert not called & {"start_job", "python_module_argv", "Popen", "launch"}, page.name
        text = page.read_text()
        assert "--run-id" not in text and "argv" not in text, page.name
