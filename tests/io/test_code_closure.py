"""The import closure a stage's run key digests and its dvc.yaml code deps list, on a made-up
project: transitive and lazy imports count, third-party ones do not, and a docstring-only package
``__init__`` is left out (an edit there runs no code, so it must not change the noise)."""
from __future__ import annotations

from pathlib import Path

from dpinstruct.io.code_closure import code_files, imported_files, run_no_code


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def project(root: Path) -> Path:
    write(root, "stages/s.py", "import numpy\nfrom dpinstruct.a import f\n")
    write(root, "dpinstruct/__init__.py", '"""The package."""\n')
    write(root, "dpinstruct/a.py", "def f():\n    from dpinstruct.sub import b  # lazy\n    return b\n")
    write(root, "dpinstruct/sub/__init__.py", "X = 1\n")  # runs code
    write(root, "dpinstruct/sub/b.py", "import json\n")
    write(root, "dpinstruct/unused.py", "")
    return root / "stages/s.py"


def test_the_closure_follows_transitive_and_lazy_imports_and_only_project_files(tmp_path):
    start = project(tmp_path)
    found = {p.as_posix() for p in imported_files(tmp_path, start)}
    assert found == {"stages/s.py", "dpinstruct/__init__.py", "dpinstruct/a.py", "dpinstruct/sub/__init__.py",
                     "dpinstruct/sub/b.py"}


def test_docstring_only_inits_are_not_code(tmp_path):
    start = project(tmp_path)
    assert run_no_code(tmp_path / "dpinstruct/__init__.py") and not run_no_code(tmp_path / "dpinstruct/sub/__init__.py")
    files = {p.as_posix() for p in code_files(tmp_path, start)}
    assert "dpinstruct/__init__.py" not in files and "dpinstruct/sub/__init__.py" in files
    assert "dpinstruct/unused.py" not in files
