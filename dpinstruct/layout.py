"""The project's layout rules, checked on its files and dvc.yaml (``problems``).

* ``stages/`` holds only DVC stage entry points: one module per stage in dvc.yaml (a ``foreach``
  stage is one module), named after it, with a ``main()``, short, importing no other stage module;
  and every stage in dvc.yaml has its module.
* ``dpinstruct/`` is the library: nothing in it imports ``stages``.
* `dvc repro` re-runs a stage when one of its deps changes, so every project file a stage imports
  (directly or through the library, lazy imports inside functions included) is covered by a dep
  of that stage: the file itself or a folder holding it. A package ``__init__.py`` that holds only
  a docstring runs no code and is exempt (``run_no_code``).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("dpinstruct", "stages")


def _module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PACKAGES}


def imported_files(root: Path | str, start: Path | str) -> set[Path]:
    """Project files (relative to root) that ``start`` imports, transitively, with the packages
    whose ``__init__.py`` each import runs; ``start`` included."""
    root = Path(root).resolve()
    todo, seen = [Path(start).resolve()], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for dotted in _imports(path):
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, then a/b/c
                found = _module_file(root, ".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return {p.relative_to(root) for p in seen}


def run_no_code(path: Path) -> bool:
    """True for a module whose body is only a docstring (a package's description)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def undeclared_code(root: Path | str, module_file: Path | str, deps: set[str]) -> list[str]:
    """The files ``module_file`` runs that no dep (file or folder) covers, as posix paths."""
    root = Path(root)
    missing = []
    for rel in sorted(imported_files(root, root / module_file)):
        posix = rel.as_posix()
        if rel.name == "__init__.py" and run_no_code(root / rel):
            continue
        if not any(posix == d or posix.startswith(d.rstrip("/") + "/") for d in deps):
            missing.append(posix)
    return missing


MAX_STAGE_LINES = 150


def _stage_specs(root: Path) -> dict[str, dict]:
    import yaml

    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")).get("stages", {})
    return {name: stage.get("do", stage) for name, stage in spec.items()}  # foreach: its template


def problems(root: Path | str) -> list[str]:
    """Every violated layout rule of the project at ``root`` (empty when the layout is sound)."""
    root = Path(root)
    specs, out = _stage_specs(root), []
    modules = {p.stem for p in (root / "stages").glob("*.py") if p.stem != "__init__"}
    for stem in sorted(modules - specs.keys()):
        out.append(f"stages/{stem}.py is not a stage in dvc.yaml: library code belongs in dpinstruct/")
    for name in sorted(specs.keys() - modules):
        out.append(f"stage {name} in dvc.yaml has no module stages/{name}.py")
    for stem in sorted(modules & specs.keys()):
        path = root / "stages" / f"{stem}.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            out.append(f"stages/{stem}.py has no main()")
        if len(path.read_text(encoding="utf-8").splitlines()) >= MAX_STAGE_LINES:
            out.append(f"stages/{stem}.py is {MAX_STAGE_LINES} lines or more: move reusable code to dpinstruct/")
        others = {m.split(".")[1] for m in _imports(path) if m.startswith("stages.")} - {stem}
        for other in sorted(others & modules):
            out.append(f"stages/{stem}.py imports the stage module stages/{other}.py")
        deps = {d for d in specs[stem].get("deps", []) if isinstance(d, str)}
        if f"stages/{stem}.py" not in deps:
            out.append(f"stage {stem}: its own module stages/{stem}.py is not one of its deps")
        for missing in undeclared_code(root, path.relative_to(root), deps):
            out.append(f"stage {stem}: imports {missing}, which no dep in dvc.yaml covers")
    for path in sorted((root / "dpinstruct").rglob("*.py")):
        if any(m == "stages" or m.startswith("stages.") for m in _imports(path)):
            out.append(f"{path.relative_to(root).as_posix()} imports stages: the library never imports a stage")
    return out
