"""The project files a module runs: its import closure through ``dpinstruct`` and ``stages``
(lazy imports inside functions included), read from the source with ``ast``. The run key of a DP
stage digests it (``dpinstruct.privacy.run_key``) and the layout check compares it with dvc.yaml's
deps (``dpinstruct.tools.layout``)."""
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


def code_files(root: Path | str, start: Path | str) -> set[Path]:
    """The files ``start`` runs (``imported_files``) less docstring-only package ``__init__.py``s:
    the one set a stage's dvc.yaml code deps, its layout check and its run key's code digest all
    use, so that an edit `dvc status` never sees cannot change the noise."""
    root = Path(root)
    return {f for f in imported_files(root, start) if not (f.name == "__init__.py" and run_no_code(root / f))}
