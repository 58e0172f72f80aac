"""The documentation: the docs/ pages build with `mkdocs build --strict` (every page in the nav, every
internal link and anchor resolves: mkdocs.yml sets `strict: true` and warns on bad anchors), and the
README stays a short entry point that starts with the two commands."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (
    "./bootstrap.sh && source .venv/bin/activate && dvc repro               # set up everything, run the pipeline on the shipped data\n"
    "./bootstrap.sh && .venv/bin/python -m pytest -n auto --dist loadfile   # set up everything, run the tests\n"
)
MAX_README_LINES = 200


def test_the_docs_build_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_docs_page_is_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert pages, "no docs/*.md"
    missing = [p for p in pages if not re.search(rf":\s*{re.escape(p)}\s*$", nav, re.MULTILINE)]
    assert not missing, f"docs pages missing from mkdocs.yml's nav: {missing}"


def test_the_readme_is_short_and_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) < MAX_README_LINES, f"README.md has {len(lines)} lines; keep it under {MAX_README_LINES}"
    assert lines[0].startswith("# "), "README.md must start with its title"
    first_block = re.search(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert first_block, "README.md has no code block"
    assert first_block.group(1) == "bash" and first_block.group(2) == COMMANDS, \
        f"README.md's first code block must be exactly the two commands, got:\n{first_block.group(0)}"
    before = text[len(lines[0]):first_block.start()]
    assert not re.search(r"^#", before, re.MULTILINE), "nothing but the title and an intro before the two commands"
    prose = [line for line in before.splitlines() if line.strip()]
    assert len(prose) <= 12, f"the intro before the two commands has {len(prose)} lines; keep it to a paragraph"


def test_ci_runs_exactly_the_readmes_test_command():
    test_command = COMMANDS.splitlines()[1].split("#")[0].strip()
    ci = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines() if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [test_command], f".ci/run must run the README's test command {test_command!r}, runs {ci}"
