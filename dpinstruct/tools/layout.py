"""The project's layout rules, checked on its files and dvc.yaml (``problems``).

* ``stages/`` holds only DVC stage entry points: one module per stage in dvc.yaml (a ``foreach``
  stage is one module), named after it, with a ``main()``, short, importing no other stage module;
  and every stage in dvc.yaml has its module.
* ``dpinstruct/`` is the library: nothing in it imports ``stages``.
* `dvc repro` re-runs a stage when one of its deps changes, so every project file a stage imports
  (directly or through the library, lazy imports inside functions included) is covered by a dep
  of that stage: the file itself or a folder holding it. A package ``__init__.py`` that holds only
  a docstring runs no code and is exempt (``code_closure.code_files``).
"""
from __future__ import annotations

import ast
from pathlib import Path

from dpinstruct.io.code_closure import _imports, code_files


def undeclared_code(root: Path | str, module_file: Path | str, deps: set[str]) -> list[str]:
    """The files ``module_file`` runs that no dep (file or folder) covers, as posix paths."""
    root = Path(root)
    missing = []
    for rel in sorted(code_files(root, root / module_file)):
        posix = rel.as_posix()
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


CODE_DEP = ("stages/", "dpinstruct/")


def code_deps(root: Path | str, stem: str) -> list[str]:
    """The code deps stage ``stem`` must list: its module first, then each library package
    (``dpinstruct/<package>``) holding a file it runs, and any top-level library file it runs,
    sorted. A whole package rather than its files: a superset DVC hashes as one folder, so dvc.yaml
    stays short and a module added to a package the stage uses is covered without an edit; the
    cost is a re-run when a sibling module the stage does not import changes. (Docstring-only
    ``__init__.py`` files run no code and add no package.)"""
    root = Path(root)
    own = f"stages/{stem}.py"
    deps = set()
    for rel in code_files(root, root / own):
        parts = rel.parts
        if parts[0] == "stages":
            if rel.as_posix() != own:
                deps.add(rel.as_posix())
        elif len(parts) > 2:
            deps.add("/".join(parts[:2]))
        else:
            deps.add(rel.as_posix())
    return [own, *sorted(deps)]


DEPS_WIDTH = 112


def flow_list(key: str, items: list[str], indent: str) -> list[str]:
    """``key: [a, b, ...]`` as YAML flow lines wrapped at ``DEPS_WIDTH``, continuation lines aligned
    under the first item; a ``${...}`` item is quoted (a brace is a flow indicator)."""
    items = [f'"{i}"' if "${" in i else i for i in items]
    head = f"{indent}{key}: ["
    lines, line = [], head
    for n, item in enumerate(items):
        piece = item + ("]" if n == len(items) - 1 else ",")
        if line not in (head, " " * len(head)) and len(line) + 1 + len(piece) > DEPS_WIDTH:
            lines.append(line)
            line = " " * len(head)
        line += ("" if line in (head, " " * len(head)) else " ") + piece
    return lines + [line]


def write_code_deps(root: Path | str, *, check: bool = False) -> list[str]:
    """Rewrite every stage's ``deps: [...]`` in dvc.yaml so that its code entries (``stages/...``,
    ``dpinstruct/...``) are ``code_deps`` and come first; every other entry (data, models) keeps
    its order, and every other line (params, outs, comments) stays as written. Returns the stages
    whose code deps differ; with ``check`` nothing is written."""
    import yaml

    root = Path(root)
    path = root / "dvc.yaml"
    lines = path.read_text(encoding="utf-8").split("\n")
    specs, out, changed, i = _stage_specs(root), [], [], 0
    stage = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip()[:-1]
        if stage in specs and line.strip().startswith("deps: ["):
            j = i
            while "]" not in lines[j]:  # a deps list holds no nested list: its first "]" closes it
                j += 1
            old = yaml.safe_load("\n".join(line.strip() for line in lines[i:j + 1]))["deps"]
            code = [d for d in old if d.startswith(CODE_DEP)]
            new = code_deps(root, stage)
            if code != new:
                changed.append(stage)
            indent = line[:len(line) - len(line.lstrip())]
            out += flow_list("deps", new + [d for d in old if not d.startswith(CODE_DEP)], indent)
            i = j + 1
            continue
        out.append(line)
        i += 1
    if changed and not check:
        path.write_text("\n".join(out), encoding="utf-8")
    return changed


def add_arguments(parser) -> None:
    parser.add_argument("--check", action="store_true", help="only report the stages whose code deps are out of date")


def run(args) -> int:
    changed = write_code_deps(".", check=args.check)
    verb = "out of date" if args.check else "rewritten"
    print(f"code deps {verb}: {', '.join(changed)}" if changed else "code deps in dvc.yaml are up to date")
    return 1 if changed and args.check else 0
