"""The shape of the package, as a new contributor relies on it (docs/ARCHITECTURE.md): imports point one way
(the import-linter layers contract in pyproject.toml), no import cycle even counting imports inside functions, no
sdkit import hidden in a function, no private name reaching across modules, small modules, and no check of a method
by name outside the method's own file."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "sdkit"
MAX_LINES = 400


def _modules() -> dict:
    """{dotted module name: path} of every module in sdkit/."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(node, imported module candidates, imported names, inside a function?) for every import statement."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.append((child, [a.name for a in child.names], [], in_function))
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    module = ".".join(base + ([module] if module else []))
                names = [a.name for a in child.names]
                found.append((child, [module] + [f"{module}.{n}" for n in names], names, in_function))
            visit(child, inside)

    visit(tree, False)
    return found


def _graph() -> dict:
    graph = {m: set() for m in MODULES}
    for m, p in MODULES.items():
        for _, candidates, _, _ in _imports(m, p):
            graph[m].update(c for c in candidates if c in MODULES and c != m)
    return graph


def test_import_linter_layers_contract_holds():
    """pyproject.toml's layers contract (cli, ui -> tools -> workflows -> train -> run -> methods -> models -> data
    -> config): an upward import anywhere fails here with the chain that breaks it."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports not found: pip install import-linter (requirements-dev.txt)"
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def test_no_import_cycle_counting_imports_inside_functions():
    graph = _graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles: {cycles}"


def test_sdkit_imports_are_at_module_top():
    """An import inside a function is for optional or heavy third-party packages only, never to dodge a cycle."""
    hidden = [f"{p.relative_to(ROOT)}:{node.lineno}" for m, p in MODULES.items()
              for node, candidates, _, inside in _imports(m, p)
              if inside and any(c == "sdkit" or c.startswith("sdkit.") for c in candidates[:1])]
    assert not hidden, f"sdkit imports inside functions: {hidden}"


def test_no_private_name_imported_across_modules():
    private = [f"{p.relative_to(ROOT)}:{node.lineno} {n}" for m, p in MODULES.items()
               for node, candidates, names, _ in _imports(m, p)
               if candidates and candidates[0].startswith("sdkit")
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert not private, f"private names imported from another module: {private}"


def test_modules_are_small():
    big = {str(p.relative_to(ROOT)): n for p in MODULES.values()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def _method_name_checks(path: Path) -> list:
    """Comparisons like `config.method == "lora"` or `c.method in ("lora", "locon")`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        names_method = any((isinstance(s, ast.Attribute) and s.attr == "method") or
                           (isinstance(s, ast.Name) and s.id == "method") for s in sides)
        has_literal = any(isinstance(s, ast.Constant) and isinstance(s.value, str) or
                          isinstance(s, (ast.Tuple, ast.List, ast.Set)) and
                          any(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in s.elts)
                          for s in sides)
        if names_method and has_literal:
            out.append(f"{path}:{node.lineno}")
    return out


def test_no_module_outside_sdkit_methods_checks_a_method_by_name():
    """A method's knowledge lives on its class (sdkit/methods/): a `method == "lora"` elsewhere is a place where the
    next method silently goes wrong."""
    found = [hit for m, p in MODULES.items() if not m.startswith("sdkit.methods")
             for hit in _method_name_checks(p)]
    assert not found, f"method checked by name outside sdkit/methods/: {found}"


def test_the_architecture_checks_can_fail(tmp_path):
    """The rules above are not vacuous: a module with a hidden import, a private import and a method-name check is
    caught by the same helpers."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(c):\n    from sdkit.models import _x\n    return c.method == 'lora'\n")
    hits = _imports("sdkit.bad", bad)
    assert hits and hits[0][3] is True and hits[0][2] == ["_x"]  # inside a function; a private name
    assert _method_name_checks(bad) == [f"{bad}:3"]


@pytest.mark.parametrize("module", ["sdkit.train.loop"])
def test_the_loop_is_a_spine(module):
    """The loop file reads top to bottom beside nanoGPT's train.py (docs/ARCHITECTURE.md): at most ~350 lines."""
    n = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert n <= 360, f"{module}: {n} lines"
