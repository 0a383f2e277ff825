"""The import graph: no cycles, and no package imports what its docstring forbids.

Each package's docstring ends with a ``Must not import:`` paragraph naming modules
(``app.x``) or saying ``anything of app but itself``; this reads those paragraphs, so the
rule a newcomer reads is the rule that is checked.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
PACKAGES = sorted(p.parent.name for p in APP.glob("*/__init__.py"))
_RULE = re.compile(r"Must not import:(.*?)(?:\n\n|\Z)", re.S)


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The ``app`` modules a file imports (absolute imports; the app uses no relative)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("app."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "app":
                found.update(f"app.{alias.name}" for alias in node.names)
            elif node.module.startswith("app."):
                found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in APP.rglob("*.py")}


def forbidden(package: str) -> tuple[set[str], bool]:
    """The modules ``app.<package>`` must not import, and whether it is all of app."""
    doc = ast.get_docstring(ast.parse((APP / package / "__init__.py").read_text("utf-8")))
    match = _RULE.search(doc or "")
    assert match, (
        f"app/{package}/__init__.py: its docstring says nothing of what it must not import"
    )
    rule = match[1]
    return set(re.findall(r"``(app\.[a-z_]+)``", rule)), "anything of ``app``" in rule


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_what_its_docstring_forbids(package: str) -> None:
    banned, everything = forbidden(package)
    assert banned or everything
    own = f"app.{package}"
    breaches = []
    for module, imported in graph().items():
        if not within(module, own):
            continue
        for target in imported:
            if within(target, own):
                continue
            if everything or any(within(target, name) for name in banned):
                breaches.append(f"{module} imports {target}")
    assert breaches == []


def test_the_rules_name_real_modules() -> None:
    modules = set(graph())
    for package in PACKAGES:
        banned, _ = forbidden(package)
        assert banned <= modules, f"app.{package} names modules that do not exist"


def test_there_are_no_import_cycles() -> None:
    edges = graph()
    # Importing app.x.y runs app.x too: a package depends on what its modules import.
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if target not in edges:
                target = target.rsplit(".", 1)[0]  # `from app.x import name`
            if state.get(target) == 1:
                raise AssertionError(" -> ".join([*path, module, target]))
            if state.get(target) is None and target in edges:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])


def test_the_checker_sees_a_breach(tmp_path: Path) -> None:
    # What the tests above stand on: a forbidden import in a file is found, in each form.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from app.analytics.writer import AnalyticsWriter\n"
        "import app.metrics.instruments\n"
        "from app import exchange\n"
        "from app.proxy import headers\n",
        encoding="utf-8",
    )
    imported = imports_of(probe)
    assert imported == {
        "app.analytics.writer",
        "app.metrics.instruments",
        "app.exchange",
        "app.proxy",
    }
    banned, everything = forbidden("proxy")
    assert not everything
    caught = {t for t in imported if any(within(t, name) for name in banned)}
    assert caught == {"app.analytics.writer", "app.metrics.instruments", "app.exchange"}
