"""Cross-cutting (the package's shape, not a module): one test file per module of course_lib, named after it, and an
import graph without a cycle, lazy imports inside functions included, so that every module sits above what it uses."""

import ast
from pathlib import Path

import course_lib

PACKAGE = Path(course_lib.__file__).parent
TESTS = Path(__file__).parent


def modules() -> list[str]:
    """Every module of course_lib by dotted name below the package (``"fhe"``, ``"exercises.nb01"``)."""
    found = [p.relative_to(PACKAGE).with_suffix("") for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    assert found, f"no module found under {PACKAGE}"
    return sorted(".".join(p.parts) for p in found)


def expected_test_file(module: str) -> str:
    return "test_" + module.replace("exercises.nb", "exercises_") + ".py"


def imported_modules(module: str) -> set[str]:
    """The course_lib modules ``module`` imports, at the top or inside a function."""
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    package = module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, from . import x, from .. import x
                base = package[: len(package) - node.level + 1]
                stems = [node.module] if node.module else [alias.name for alias in node.names]
                names.update(".".join([*base, stem]) for stem in stems)
            elif node.module and node.module.startswith("course_lib."):
                names.add(node.module.removeprefix("course_lib."))
        elif isinstance(node, ast.Import):
            names.update(a.name.removeprefix("course_lib.") for a in node.names if a.name.startswith("course_lib."))
    return {name for name in names if name in set(modules())}


def test_every_module_has_a_test_file_of_its_name():
    missing = [m for m in modules() if not (TESTS / expected_test_file(m)).exists()]
    assert not missing, f"modules without a test file of their name: {missing}"


def test_every_test_file_names_its_module_or_says_it_is_cross_cutting():
    expected = {expected_test_file(m): m for m in modules()}
    files = sorted(TESTS.glob("test_*.py"))
    assert files, f"no test file found under {TESTS}"
    for path in files:
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if path.name in expected:
            assert docstring.startswith(f"course_lib.{expected[path.name]}"), (
                f"{path.name} should open its docstring with the module it tests, course_lib.{expected[path.name]}"
            )
        else:
            assert docstring.startswith("Cross-cutting ("), (
                f"{path.name} is named after no module of course_lib: name it after one, or open its docstring "
                "with 'Cross-cutting (what it tests instead)'"
            )


def test_the_import_graph_has_no_cycle():
    graph = {m: imported_modules(m) for m in modules()}
    assert graph["gpt2"] >= {"config", "fast_attention", "fhe"}  # the walk sees relative imports
    assert "gpt2" in graph["evaluation"]  # and imports inside functions
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(module) :] + [module])}")
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])
