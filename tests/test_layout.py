"""The tests mirror ``app/``, and tests/README.md cannot go stale: every module of ``app/`` has
its own test file (``app/x/y.py`` → ``tests/x/test_y.py``) unless :data:`NO_OWN_FILE` says why
not; the README's module table names every module (and no module that is gone) with its own
file first, every path it names exists, and every test module is named in it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "tests" / "README.md"
MODULE_TABLE = "## Every module and its tests"
# Modules whose tests cannot sensibly live in a file named after them, and why.
NO_OWN_FILE = {
    "app/__main__.py": "the program's entry: tests/test_cli.py runs python -m app, "
    "tests/test_main.py serves as its own_process",
    "app/types.py": "type aliases only; no behaviour to test",
}
PATH = re.compile(r"`((?:app|tests|scripts|bench|build)/[^`<>*\s]+)")


def holds_code(path: Path) -> bool:
    """Whether a file does more than a package ``__init__`` does with nothing in it: a
    docstring, imports, and dunder names such as ``__all__`` and ``__version__``."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for i, node in enumerate(body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Assign) and all(
            isinstance(target, ast.Name) and target.id.startswith("__") for target in node.targets
        ):
            continue
        return True
    return False


def app_modules() -> set[str]:
    """Every module of the app, as ``app/x/y.py``; a package ``__init__`` when it holds code."""
    found = set()
    for path in (ROOT / "app").rglob("*.py"):
        if path.name == "__init__.py" and not holds_code(path):
            continue
        found.add(path.relative_to(ROOT).as_posix())
    return found


def module_rows() -> dict[str, str]:
    """The module table: {module path in the first cell: the cell of its tests}."""
    text = README.read_text(encoding="utf-8")
    assert MODULE_TABLE in text, f"tests/README.md has no section {MODULE_TABLE!r}"
    rows: dict[str, str] = {}
    for line in text.split(MODULE_TABLE, 1)[1].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`app/"):
            module = cells[0].strip("`")
            assert module not in rows, f"{module} has two rows"
            rows[module] = cells[1]
    return rows


def test_every_module_of_the_app_has_a_row() -> None:
    missing = sorted(app_modules() - module_rows().keys())
    assert not missing, f"tests/README.md names no tests for {missing}: add their rows"


def test_every_row_is_a_module_of_the_app() -> None:
    stale = sorted(
        module
        for module in module_rows()
        if "<package>" not in module and not (ROOT / module).is_file()
    )
    assert not stale, f"tests/README.md has rows for modules that are gone: {stale}"


def test_every_path_the_readme_names_exists() -> None:
    named = set(PATH.findall(README.read_text(encoding="utf-8")))
    absent = sorted(path for path in named if not (ROOT / path.rstrip("/")).exists())
    assert not absent, f"tests/README.md names paths that do not exist: {absent}"


def test_every_row_names_a_test_or_says_why_not() -> None:
    untested = sorted(
        module
        for module, tests in module_rows().items()
        if "tests/" not in tests and "only" not in tests
    )
    assert not untested, f"rows without a test or a reason: {untested}"


def test_every_test_module_is_named_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py"))
    unnamed = [m for m in modules if f"`{m}`" not in text]
    assert not unnamed, f"tests/README.md does not say what these hold: {unnamed}"


def own_test_file(module: str) -> str:
    """``app/x/y.py`` → ``tests/x/test_y.py``; ``app/y.py`` → ``tests/test_y.py``."""
    parts = module.split("/")[1:]
    return "/".join(["tests", *parts[:-1], f"test_{parts[-1]}"])


def test_every_module_has_a_test_file_named_after_it() -> None:
    missing = sorted(
        f"{module} → {own_test_file(module)}"
        for module in app_modules()
        if module not in NO_OWN_FILE and not (ROOT / own_test_file(module)).is_file()
    )
    assert not missing, f"modules without their own test file: {missing}"


def test_every_exemption_is_still_needed() -> None:
    stale = sorted(
        module
        for module in NO_OWN_FILE
        if not (ROOT / module).is_file() or (ROOT / own_test_file(module)).is_file()
    )
    assert not stale, f"NO_OWN_FILE names modules that are gone or have their file: {stale}"


def test_each_row_names_the_own_file_first() -> None:
    wrong = sorted(
        module
        for module, tests in module_rows().items()
        if module in app_modules()
        and module not in NO_OWN_FILE
        and not tests.startswith(f"`{own_test_file(module)}`")
    )
    assert not wrong, f"rows whose first test is not the module's own file: {wrong}"
