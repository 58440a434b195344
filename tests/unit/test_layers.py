"""The architecture as a test: rooms import only downward, and a deferred import says why.

The order, top to bottom (ARCHITECTURE.md draws it)::

    cli -> suite, calibrate -> report -> load, check -> schema -> servers -> ext -> core

A module may import its own room and any room below it, never one above it or
a sibling on its own level, so no cycle between folders can form.  The files
are read as text (``ast`` for Python, the Python-level import lines of the
Cython sources), nothing is imported, so a missing build cannot hide a
violation.  An import inside a function is allowed where it defers a heavy
import or breaks a cycle; it must say which in a comment, on its own line or
on the lines just above its block of imports.
"""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: source folder -> package (setup.py's package_dir)
FOLDERS = {"sockbench": "sockbench", "servers": "sockbench.servers", "ext": "sockbench.ext", "bench": "sockbench.bench"}

#: room -> level; a module imports only rooms of a greater level, or its own room
LEVELS = {"cli": 0, "suite": 1, "calibrate": 1, "report": 2, "load": 3, "check": 3, "schema": 4, "servers": 5, "ext": 6,
          "core": 7}

#: a function-level import of one of these defers real start-up cost: the comment says so
_IMPORT_RE = re.compile(r"^\s*(?:from\s+(sockbench[\w.]*)\s+import\s|import\s+(sockbench[\w.]*))")


def room(module):
    """The room of a dotted module name under ``sockbench``, or None outside the project."""
    parts = module.split(".")
    if parts[0] != "sockbench":
        return None
    if len(parts) == 1:
        return "core"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    if parts[1] in ("servers", "ext"):
        return parts[1]
    if parts[1] == "bench":
        if len(parts) == 2 or parts[2] == "schema":
            return "schema"
        return parts[2]
    return "core"


def _sources():
    for folder, package in FOLDERS.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            for name in sorted(filenames):
                if not name.endswith((".py", ".pyx")):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), base)
                mod = os.path.splitext(rel)[0].replace(os.sep, ".")
                mod = package if mod == "__init__" else f"{package}.{mod.removesuffix('.__init__')}"
                yield os.path.join(dirpath, name), mod


def _imports(path, module):
    """``(line, imported module, inside a function)`` for every project import of one file."""
    text = open(path, encoding="utf-8").read()
    if path.endswith(".pyx"):
        for i, line in enumerate(text.splitlines(), 1):
            m = _IMPORT_RE.match(line)
            if m:
                yield i, m.group(1) or m.group(2), line.startswith((" ", "\t"))
        return
    tree = ast.parse(text, path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child.lineno, alias.name, in_function
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in child.names] if base in ("sockbench", "sockbench.bench") else [base]
                for name in names:
                    yield child.lineno, name, in_function
            yield from visit(child, nested)

    yield from visit(tree, False)


def _all_imports():
    for path, module in _sources():
        for line, target, in_function in _imports(path, module):
            yield os.path.relpath(path, ROOT), line, module, target, in_function


def test_every_source_file_is_in_a_room():
    rooms = {room(module) for _, module in _sources()}
    assert rooms <= set(LEVELS), rooms - set(LEVELS)
    assert {"cli", "suite", "calibrate", "report", "load", "servers", "ext", "core"} <= rooms


def test_rooms_import_only_downward():
    bad = []
    for rel, line, module, target, _ in _all_imports():
        src, dst = room(module), room(target)
        if dst is None or src == dst:
            continue
        if LEVELS[dst] <= LEVELS[src]:
            bad.append(f"{rel}:{line}: {src} imports {dst} ({target})")
    assert not bad, "imports against the dependency order:\n" + "\n".join(bad)


def test_no_cycle_between_folders():
    """The room graph itself (what the order test implies), checked directly by a depth-first search."""
    graph = {}
    for _, _, module, target, _ in _all_imports():
        src, dst = room(module), room(target)
        if dst is not None and src != dst:
            graph.setdefault(src, set()).add(dst)
    state = {}

    def dfs(node, path):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                pytest.fail("cycle between rooms: " + " -> ".join(path + [nxt]))
            if nxt not in state:
                dfs(nxt, path + [nxt])
        state[node] = "done"

    for node in list(graph):
        if node not in state:
            dfs(node, [node])


def _has_reason(lines, lineno):
    """A comment on the import's line, or on the lines just above its block of imports."""
    i = lineno - 1
    if "#" in lines[i]:
        return True
    i -= 1
    while i >= 0 and (not lines[i].strip() or re.match(r"\s*(from\s+\S+\s+)?import\s", lines[i]) or "#" in lines[i]):
        if "#" in lines[i]:
            return True
        i -= 1
    return False


def test_function_level_imports_say_why():
    bad = []
    cache = {}
    for rel, line, module, target, in_function in _all_imports():
        if not in_function:
            continue
        lines = cache.setdefault(rel, open(os.path.join(ROOT, rel), encoding="utf-8").read().splitlines())
        if not _has_reason(lines, line):
            bad.append(f"{rel}:{line}: import {target} inside a function without a comment saying why")
    assert not bad, "\n".join(bad)


def _setup_source(name):
    """The path a ``NAME = os.path.join("a", "b")`` assignment in setup.py names (what a build generates from)."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return os.path.join(*(ast.literal_eval(a) for a in node.value.args))
    raise AssertionError(f"setup.py assigns no {name}")


def test_what_the_build_generates_into_ext_comes_from_below_it():
    """setup.py writes ``ext/protocols.h`` from a Python module: ext/ then depends on that module, which must
    sit in ext/ or below it (the core), as an import from ext/ would have to."""
    path = _setup_source("PROTOCOLS_SOURCE")
    folder, rest = path.split(os.sep, 1)
    module = f"{FOLDERS[folder]}.{os.path.splitext(rest)[0].replace(os.sep, '.')}"
    assert os.path.exists(os.path.join(ROOT, path)), path
    assert LEVELS[room(module)] >= LEVELS["ext"], f"ext/protocols.h is generated from {path}, in room {room(module)}"


def test_the_package_main_only_starts_the_cli():
    """``sockbench/__main__.py`` sits in the core folder because ``python -m sockbench`` looks there; it is the
    cli's, so it may hold nothing but the call, or the core folder would hide logic that depends on the CLI."""
    tree = ast.parse(open(os.path.join(ROOT, "sockbench", "__main__.py"), encoding="utf-8").read())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert room("sockbench.__main__") == "cli"
    assert [ast.dump(n) for n in body] == [
        ast.dump(ast.parse("from sockbench.cli import main").body[0]),
        ast.dump(ast.parse("raise SystemExit(main())").body[0]),
    ]


def test_the_checker_sees_a_violation():
    """The rules above are not vacuous: a known upward import is classified as one."""
    assert room("sockbench.cli.load") == "cli" and room("sockbench.bench.schema") == "schema"
    assert room("sockbench.units") == "core" and room("sockbench.bench.load.hdr") == "load"
    assert LEVELS[room("sockbench.cli.main")] < LEVELS[room("sockbench.bench.report.store")]
    lines = ["def f():", "    import json", "    # matplotlib is heavy: only when plotting", "    import numpy"]
    assert not _has_reason(lines, 2) and _has_reason(lines, 4)


def test_test_files_have_unique_basenames():
    """pytest imports test files by basename (no ``__init__.py`` in ``tests/``): two files of one name in
    different folders fail the whole collection on a clean clone, where no ``__pycache__`` hides it."""
    seen = {}
    for folder, _dirs, files in os.walk(os.path.join(ROOT, "tests")):
        for name in files:
            if name.startswith("test_") and name.endswith(".py"):
                seen.setdefault(name, []).append(os.path.relpath(folder, ROOT))
    assert {n: f for n, f in seen.items() if len(f) > 1} == {}
