"""The package's shape, checked from its source with ``ast``: imports point down the wings'
order (no cycle, nothing upward, nothing imports the package face from inside), no private
name crosses a module boundary (tests included), and no function is too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "fastprep"

# A module may import modules of its own rank or below, never above. Peers of one rank may
# import each other as long as no cycle forms. train reads the dataset format only.
RANK = {"_version": 0, "io": 0, "flags": 0, "kernels": 0,
        "dataset": 1, "stages": 1, "dedupe": 1,
        "pipeline": 2, "train": 2,
        "cli": 3, "sample": 3, "bench": 3, "report": 3, "hf": 3, "recipe": 3, "__init__": 3, "__main__": 3}
TRAIN_MAY_IMPORT = {"_version", "io", "flags", "dataset", "train"}
# Functions over MAX_LINES must be numba kernels (or their twins) and carry a "# long:"
# comment on the line above saying why one function is the clearer form.
MAX_LINES = 80


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    known = modules()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("fastprep")]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, path.name == "__init__.py", node)
            if not target.startswith("fastprep"):
                continue
            names = [a.name for a in node.names]
            # `from . import masks` imports the submodule fastprep.x.masks
            subs = [n for n in names if f"{target}.{n}" in known]
            for n in subs:
                out.append((f"{target}.{n}", [], node.lineno))
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                out.append((target, rest, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {t for t, _, _ in imports(m, p) if t in mods and t != m} for m, p in mods.items()}


def test_no_import_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert len(g) > 30  # guard: the walk saw the package


def test_imports_point_down_the_wings() -> None:
    bad = []
    seen = 0
    for m, path in modules().items():
        if m == "fastprep":
            continue
        for target, names, line in imports(m, path):
            seen += 1
            if target == "fastprep" and m not in ("fastprep.__main__",):
                bad.append(f"{m}:{line} imports the package face ({', '.join(names)})")
                continue
            src, dst = wing(m), wing(target)
            if target == "fastprep" or src == dst:
                continue
            if RANK[dst] > RANK[src]:
                bad.append(f"{m}:{line} imports upward: {target}")
            if src == "train" and dst not in TRAIN_MAY_IMPORT:
                bad.append(f"{m}:{line}: the training side reads the dataset only, not {target}")
    assert seen > 100  # guard: imports were found
    assert not bad, "\n".join(bad)


def _private_uses(path: Path, module: str | None) -> list[str]:
    """Private names (``_x``, not dunders) taken from another fastprep module: imported by
    name, or read as an attribute of an imported fastprep module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = resolve(module, path.name == "__init__.py", node) if module else (node.module or "")
            if not target.startswith("fastprep") or target == module:
                continue
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno} imports {target}.{a.name}")
                if f"{target}.{a.name}" in modules():
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fastprep"):
                    aliases.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno} reads {node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module_boundary() -> None:
    bad = []
    for m, path in modules().items():
        bad += [f"{m}: {u}" for u in _private_uses(path, m)]
    for path in sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")):
        bad += [f"{path.relative_to(ROOT)}: {u}" for u in _private_uses(path, None)]
    assert not bad, "\n".join(bad)


def test_no_function_over_80_lines_outside_justified_kernels() -> None:
    bad = []
    counted = 0
    for m, path in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            counted += 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            length = node.end_lineno - node.lineno + 1
            justified = wing(m) == "kernels" and lines[first - 2].strip().startswith("# long:")
            if length > MAX_LINES and not justified:
                bad.append(f"{m}.{node.name}: {length} lines")
    assert counted > 300  # guard: functions were found
    assert not bad, "\n".join(bad)


def test_the_package_face_rebinds_no_submodule() -> None:
    """``import fastprep.pipeline.run`` must give the module: the face exports names that are
    not submodule names."""
    import fastprep

    subs = {p.stem for p in PKG.glob("*.py")} | {p.name for p in PKG.iterdir() if p.is_dir()}
    assert not (set(fastprep.__all__) & subs), set(fastprep.__all__) & subs
    import fastprep.pipeline.run as run

    assert callable(run.prepare) and run.__name__ == "fastprep.pipeline.run"


def test_readme_layout_matches_the_tree() -> None:
    """Every module of the package is named in the README's Layout section, and every name
    there exists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 4)] if "\n## " in layout[4:] else layout
    for m, path in modules().items():
        name = path.stem if path.stem != "__init__" else None
        if name is None or name == "__main__":
            continue
        assert f"{name}" in layout, f"{m} is missing from the README's Layout"
    for w in ("dataset/", "stages/", "dedupe/", "pipeline/", "kernels/", "train/"):
        assert w in layout


def test_public_api_is_lazy_and_complete() -> None:
    """Every public name resolves, __all__ lists exactly them, and importing the package loads
    none of the driver (a worker unpickling its task function imports the package first)."""
    import subprocess
    import sys

    import fastprep

    for name in fastprep.__all__:
        assert getattr(fastprep, name) is not None
    with pytest.raises(AttributeError):
        fastprep.not_a_name  # noqa: B018
    code = ("import sys, fastprep.pipeline.tasks; "
            "bad = [m for m in ('fastprep.pipeline.run', 'fastprep.pipeline.merge', 'numba', "
            "'importlib.metadata', 'pyarrow') if m in sys.modules]; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
