"""The layering rules of docs/architecture.md, checked on the source text with `ast` (nothing is imported).

Imports run one way: app, cli -> training -> engine. The engine knows no Gradio and no training;
training knows no Gradio; the app reaches the network only through engine/training calls, never
torch itself. Imports count wherever they are (module level, inside functions, under `if`), and
so does `importlib.import_module("...")` / `__import__("...")` with a literal name, and a string
that is exactly a maskseg module path (the CLI loads its plugin commands from such strings).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "maskseg"
MAX_FUNCTION_LINES = 80

# A string that is exactly a maskseg module path, e.g. "maskseg.training.train".
MODULE_PATH_STRING = re.compile(r"maskseg(\.[A-Za-z_][A-Za-z0-9_]*)+")


@dataclass(frozen=True)
class Import:
    """One module a file imports (or may import: `from a import b` may mean module a.b)."""

    file: Path
    line: int
    module: str  # the dotted name it reaches
    text: str  # the source as written, for the failure message

    def where(self) -> str:
        return f"{relative(self.file)}:{self.line}: {self.text}"


def relative(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def python_files(root: Path) -> list[Path]:
    """Every .py file under `root` (or `root` itself), skipping caches and hidden folders."""
    if root.is_file():
        return [root]
    return sorted(
        path for path in root.rglob("*.py")
        if not any(part == "__pycache__" or part.startswith(".") for part in path.relative_to(root).parts)
    )


_TREES: dict[Path, ast.Module] = {}


def parse(path: Path) -> ast.Module:
    if path not in _TREES:
        _TREES[path] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return _TREES[path]


def module_name(path: Path) -> str:
    """maskseg/engine/segmenter.py -> maskseg.engine.segmenter; a package's __init__ -> the package."""
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(path: Path, level: int, module: str | None) -> str:
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]  # a plain module's package is its folder
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, *([module] if module else [])])


def imports_in(path: Path, tree: ast.Module | None = None) -> list[Import]:
    """Every module the file imports, at any depth, with the line and the source text."""
    tree = tree if tree is not None else parse(path)
    source_lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    found: list[Import] = []

    def text_of(node: ast.AST) -> str:
        if source_lines and 0 < node.lineno <= len(source_lines):
            text = " ".join(line.strip() for line in source_lines[node.lineno - 1 : node.end_lineno])
        else:
            text = ast.unparse(node)
        return text if len(text) <= 160 else text[:157] + "..."

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(path, node.lineno, alias.name, text_of(node)))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(path, node.level, node.module) if node.level else (node.module or "")
            found.append(Import(path, node.lineno, base, text_of(node)))
            for alias in node.names:  # `from maskseg import app` imports the module maskseg.app
                if alias.name != "*":
                    found.append(Import(path, node.lineno, f"{base}.{alias.name}", text_of(node)))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append(Import(path, node.lineno, node.args[0].value, text_of(node)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if MODULE_PATH_STRING.fullmatch(node.value):
                found.append(Import(path, node.lineno, node.value, text_of(node)))
    return found


def reaches(module: str, forbidden: str) -> bool:
    """Whether `module` is `forbidden` or inside it (torch.nn is torch; torchvision is not torch)."""
    return module == forbidden or module.startswith(forbidden + ".")


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files:
        seen = set()
        for imp in imports_in(path):
            for target in forbidden:
                if reaches(imp.module, target) and (imp.line, target) not in seen:
                    seen.add((imp.line, target))
                    found.append(f"{imp.where()}  (reaches {target})")
    return found


def layer_files(name: str) -> list[Path]:
    files = python_files(PACKAGE / name)
    assert files, f"no Python files under maskseg/{name}: has the layer moved? Update this test."
    return files


def cli_files() -> list[Path]:
    """The CLI: maskseg/cli.py (or a maskseg/cli/ package) and maskseg/__main__.py."""
    files = python_files(PACKAGE / "cli") if (PACKAGE / "cli").is_dir() else [PACKAGE / "cli.py"]
    return [*files, PACKAGE / "__main__.py"]


def assert_none(found: list[str], rule: str) -> None:
    assert not found, f"{rule}; {len(found)} offending import(s):\n  " + "\n  ".join(found)


# ---------------------------------------------------------------------------------------------
# Import direction: app, cli -> training -> engine.


def test_engine_imports_no_gradio_training_app_or_cli() -> None:
    found = violations(layer_files("engine"), ("gradio", "maskseg.training", "maskseg.app", "maskseg.cli"))
    assert_none(found, "maskseg/engine must not import gradio, maskseg.training, maskseg.app or maskseg.cli")


def test_training_imports_no_gradio_app_or_cli() -> None:
    found = violations(layer_files("training"), ("gradio", "maskseg.app", "maskseg.cli"))
    assert_none(found, "maskseg/training must not import gradio, maskseg.app or maskseg.cli")


def test_app_imports_no_torch_torchvision_or_cli() -> None:
    found = violations(layer_files("app"), ("torch", "torchvision", "maskseg.cli"))
    assert_none(
        found,
        "maskseg/app must not import torch, torchvision or maskseg.cli (it reaches the network through "
        "engine/training calls)",
    )


def test_cli_does_not_import_the_app() -> None:
    files = cli_files()
    assert all(path.is_file() for path in files), f"CLI files missing: {[relative(p) for p in files]}"
    assert_none(violations(files, ("maskseg.app",)), "the CLI must not import maskseg.app")


def test_scale_out_does_not_import_the_app_or_the_cli() -> None:
    """maskseg/scale/ (`predict --engine ray`) sits beside the CLI: the CLI calls it, never the reverse."""
    scale = [*python_files(PACKAGE / "scale"), PACKAGE / "scale.py"]
    files = [path for path in scale if path.is_file()]
    assert files, "no maskseg/scale package: has the scale-out layer moved? Update this test."
    assert_none(violations(files, ("gradio", "maskseg.app", "maskseg.cli")),
                "maskseg.scale must not import gradio, maskseg.app or maskseg.cli")


def test_the_cli_imports_scale_out_only_when_asked() -> None:
    """`--engine ray` imports maskseg.scale inside the command, so the CLI starts without Ray installed."""
    top_level = [
        imp for path in cli_files() for imp in imports_in(path)
        if any(node.lineno == imp.line for node in parse(path).body if isinstance(node, (ast.Import, ast.ImportFrom)))
    ]
    assert_none([imp.where() for imp in top_level if reaches(imp.module, "maskseg.scale") or reaches(imp.module, "ray")],
                "the CLI must import maskseg.scale and ray lazily (inside the ray command)")


def test_nothing_below_the_faces_imports_scale_out() -> None:
    """Ray stays optional: engine and training (and the app) never reach maskseg.scale."""
    files = [*layer_files("engine"), *layer_files("training"), *layer_files("app")]
    assert_none(violations(files, ("maskseg.scale", "ray")), "engine, training and app must not import maskseg.scale or ray")


# ---------------------------------------------------------------------------------------------
# Size and documentation.


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'file:line name length' for every function or method (nested ones too) over `limit` lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                length = child.end_lineno - child.lineno + 1
                if length > limit:
                    found.append(f"{relative(path)}:{child.lineno} {name} {length}")
                visit(child, f"{name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(parse(path), "")
    return found


def test_no_function_is_longer_than_80_lines() -> None:
    files = [*python_files(PACKAGE), REPO_ROOT / "app.py", *python_files(REPO_ROOT / "benchmarks")]
    found = [offender for path in files for offender in long_functions(path)]
    assert not found, (
        f"{len(found)} function(s) longer than {MAX_FUNCTION_LINES} lines (file:line name length); "
        "split them into named steps:\n  " + "\n  ".join(found)
    )


def package_folders() -> list[Path]:
    """Every folder below maskseg/ that holds Python files (each must be a package)."""
    return sorted({path.parent for path in python_files(PACKAGE) if path.parent != PACKAGE})


def test_every_package_folder_has_a_one_line_docstring_in_its_init() -> None:
    folders = package_folders()
    assert {"engine", "training", "app"} <= {folder.name for folder in folders}
    problems = []
    for folder in folders:
        init = folder / "__init__.py"
        if not init.is_file():
            problems.append(f"{relative(folder)}/: no __init__.py")
            continue
        docstring = ast.get_docstring(parse(init))
        if not docstring or not docstring.strip():
            problems.append(f"{relative(init)}:1: no docstring saying what the package is for")
        elif "\n" in docstring.strip():
            problems.append(f"{relative(init)}:1: docstring has {len(docstring.strip().splitlines())} lines, not one")
    assert not problems, "every package folder needs an __init__.py with a one-line docstring:\n  " + "\n  ".join(problems)


def test_every_module_has_a_docstring() -> None:
    missing = [
        f"{relative(path)}:1: no module docstring"
        for path in python_files(PACKAGE)
        if not (ast.get_docstring(parse(path)) or "").strip()
    ]
    assert not missing, "every module under maskseg/ says what it is for in a docstring:\n  " + "\n  ".join(missing)


# ---------------------------------------------------------------------------------------------
# The checker itself: it must see what the rules are about, or the tests above prove nothing.


CHECKER_SAMPLE = '''
"""Sample."""
import torch.nn as nn
from . import prediction
from ..app import launch
from maskseg import app
import importlib


def later():
    if True:
        from torchvision.ops import nms
        import gradio as gr
    return importlib.import_module("maskseg.training.train")


class Plugins:
    NAMES = ("maskseg.cli",)
    NOT_A_MODULE = "torch is a backend name"
'''


def test_checker_sees_nested_relative_dynamic_and_string_imports() -> None:
    fake = PACKAGE / "engine" / "sample.py"  # never written: only its name places the imports
    modules = {imp.module for imp in imports_in(fake, ast.parse(CHECKER_SAMPLE))}
    assert {
        "torch.nn", "maskseg.engine", "maskseg.engine.prediction", "maskseg.app.launch", "maskseg.app",
        "torchvision.ops", "gradio", "maskseg.training.train", "maskseg.cli",
    } <= modules
    assert "torch is a backend name" not in modules  # only maskseg module paths count as strings
    assert reaches("torch.nn", "torch") and not reaches("torchvision.ops", "torch")


def test_checker_measures_methods_and_nested_functions() -> None:
    def body(indent: int, lines: int) -> list[str]:
        return [" " * indent + "x = 1"] * lines

    source = "\n".join([
        "class A:",  # line 1
        "    def m(self):",  # line 2: 1 + 85 lines
        *body(8, 85),
        "def f():",  # line 88: 1 + 10 + 1 + 81 lines = 93
        *body(4, 10),
        "    def inner():",  # line 99: 1 + 81 lines = 82
        *body(8, 81),
        "def short():",  # 80 lines exactly: allowed
        *body(4, 79),
    ])
    sample = REPO_ROOT / "tests" / "_architecture_sample.py"  # never written: parsed from `source`
    _TREES[sample] = ast.parse(source)
    try:
        found = long_functions(sample)
    finally:
        _TREES.pop(sample)
    assert found == [
        "tests/_architecture_sample.py:2 A.m 86",
        "tests/_architecture_sample.py:88 f 93",
        "tests/_architecture_sample.py:99 f.<locals>.inner 82",
    ], found
