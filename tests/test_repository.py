"""The repository's shape, read from the code: no import cycles, the package layering, file and function sizes,
the training loop's length, no private names imported across modules, and links that resolve inside a clone."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "embedding", "pipeline", "models", "training", "bench", "inference")
# who may import whom: a package missing from a row may not be imported by it
ALLOWED = {
    "kernels": set(),
    "models": set(),
    "pipeline": {"kernels"},
    "embedding": {"kernels", "pipeline"},
    "inference": set(),
    "training": {"kernels", "pipeline", "embedding", "models", "inference"},
    "bench": {"kernels", "pipeline", "embedding", "models", "training", "train", "tests"},
    "train": {"training"},
}
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_RUN_LINES = 400, 60, 70


def _tracked(pattern: str) -> list[pathlib.Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", pattern],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / p for p in out if (ROOT / p).exists()]


def _module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _project_modules() -> dict[str, pathlib.Path]:
    return {
        _module_name(p): p
        for p in _tracked("*.py")
        if p.relative_to(ROOT).parts[0] in (*PACKAGES, "train.py")
    }


def _imports(path: pathlib.Path, modules) -> list[tuple[str, str]]:
    """(imported module, the names it imports) of every import in the file, function-level ones included."""
    found = []
    this = _module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parent = (
                    this.split(".")[: -node.level]
                    if path.name != "__init__.py"
                    else this.split(".")
                )
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, "") if sub in modules else (base, alias.name))
    return [(m, n) for m, n in found if m in modules]


@pytest.fixture(scope="module")
def graph():
    modules = _project_modules()
    return modules, {name: _imports(path, modules) for name, path in modules.items()}


def test_no_import_cycles(graph):
    modules, imports = graph
    edges = {m: {target for target, _ in imports[m]} - {m} for m in modules}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                cycle = stack[stack.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m)


def test_packages_import_only_what_they_build_on(graph):
    _, imports = graph
    bad = [
        f"{m} imports {target}"
        for m, targets in imports.items()
        for target, _ in targets
        if target.split(".")[0] != m.split(".")[0]
        and target.split(".")[0] not in ALLOWED[m.split(".")[0]]
    ]
    assert not bad, bad


def test_no_private_names_across_modules(graph):
    _, imports = graph
    bad = [
        f"{m} imports {name} from {target}"
        for m, targets in imports.items()
        for target, name in targets
        if name.startswith("_") and not name.startswith("__") and target != m
    ]
    assert not bad, bad


def test_only_train_py_at_the_root():
    assert sorted(p.name for p in _tracked("*.py") if p.parent == ROOT) == ["train.py"]


def test_file_and_function_sizes():
    long_files, long_functions = [], []
    for path in _tracked("*.py"):
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                kernel = any("jit" in ast.unparse(d) for d in node.decorator_list)
                if lines > MAX_FUNCTION_LINES and not kernel:
                    long_functions.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    assert not long_files, long_files
    assert not long_functions, long_functions


def test_the_training_loop_reads_as_a_table_of_contents():
    tree = ast.parse((ROOT / "train.py").read_text())
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    assert run.end_lineno - run.lineno + 1 < MAX_RUN_LINES


def test_no_issue_numbers_or_paths_outside_the_repository():
    bad = []
    for path in [*_tracked("*.py"), *_tracked("*.md"), *_tracked("*.toml")]:
        if "bench/results/" in str(path.relative_to(ROOT)):
            continue  # measurements as they were recorded
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"\.\./shared|\b[Ii]ssue \d+|\(issue \d+\)", line):
                bad.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bad, bad


def test_markdown_links_resolve():
    bad = []
    for path in _tracked("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            if not (path.parent / target).exists():
                bad.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not bad, bad
