"""Privacy lineage: check the privacy class of every artifact on the DVC graph, and report it.

A command, not a stage (it reads dvc.yaml and dvc.lock, which stages must not):
``dpinstruct lineage`` checks; ``dpinstruct lineage --report metrics/lineage.md`` also
writes the Markdown report (path, md5 from dvc.lock, stage, params, class, epsilon).

Classes (``meta.privacy`` of each stage in dvc.yaml, and ``dpinstruct.privacy`` in each Parquet):
  private  raw private data, or derived from it without a DP mechanism;
  dp       the output of a DP mechanism stage (``meta.dp_mechanism``), or derived from dp and
           public artifacts only (post-processing);
  public   derived from public inputs only.
A mechanism stage lists its dp outputs in ``meta.dp_outputs``; its other outputs (e.g. un-noised
training curves) are private. It lists the private inputs its mechanism protects in
``meta.dp_inputs``. Inputs no stage produces: a ``private_path`` of params.yaml (``data.private_path``,
``rl.data.private_path``) is private; a ``public_path``, the code under stages/ and dpinstruct/ and
params.yaml are public; ANY OTHER raw input counts as private (fail safe: a new input is private
until params.yaml declares it as a ``public_path``).

Rules:
  * on every edge (dependency D -> stage S): S private: anything; S public: D public; S dp: D dp
    or public, except that a mechanism stage may read the private inputs in its dp_inputs;
  * a dp_mechanism on a non-dp stage is an error, and so is one whose ledger entry
    (metrics/privacy/<stage>.json, a dp output) is missing or not composed by the accountant (the
    stage writing metrics/privacy.json, which must depend on every entry);
  * a stage that may send its inputs to a remote endpoint (``meta.remote_backend``: the params
    section with ``backend`` and ``allow_remote_private``) reads no private data while that
    backend is not ``local`` (or ``none``), unless the section opts in;
  * every project path a stage's module refers to (its module-level constants and string
    literals under data/, metrics/, plots/, dvclive/) is a declared dep or out of that stage
    (or its own resume state, data/checkpoints/<stage>): code that opens an undeclared file would
    escape both DVC and this check; and every project file the stage imports, transitively, is
    covered by a dep (``dpinstruct.tools.layout``), or `dvc repro` would not re-run it on a change;
  * Parquet outputs present on disk carry their stage's class;
  * no ``private_path`` of params.yaml is tracked by git (nor, if it exists, left un-ignored in the
    work tree, one ``git add -A`` from a commit), unless a SOURCE.txt beside it holds the line
    ``privacy: public stand-in`` (the public data shipped in place of private data): a user's own
    private files go under data/private/, which git ignores, and into DVC with ``dvc add``;
  * an output a stage lists in ``meta.evaluation_only`` (a gold reward model trained without DP on
    every private comparison, a non-private reference) is read only by evaluation stages
    (``meta.evaluation: true``), whose own outputs are evaluation-only in turn: a model that may
    judge the others must never feed their training, directly or through a report.
By induction over the DAG no dp or public artifact then has a private ancestor except through a
declared DP mechanism, whose cost the release's ledger composes.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

RANK = {"public": 0, "dp": 1, "private": 2}  # how restrictive a class is
ALLOWED = {"private": {"public", "dp", "private"}, "dp": {"public", "dp"}, "public": {"public"}}
LEDGER = "metrics/privacy/{stage}.json"
COMPOSED = "metrics/privacy.json"
# A stage's own resume state: deliberately not a DVC output (see dvc.yaml), read only by its writer.
RESUME = "data/checkpoints/{stage}"
CODE = ("stages/", "dpinstruct/")  # project code: public inputs
PROJECT_PATH = re.compile(r"^(data|metrics|plots|dvclive)/[\w./@-]+$")


@dataclass
class Artifact:
    path: str
    stage: str
    privacy: str
    md5: str | None
    mechanisms: set = field(default_factory=set)  # DP mechanism stages upstream (inclusive)


def _norm(path: str) -> str:
    return os.path.normpath(path).replace(os.sep, "/")


def _covers(a: str, b: str) -> bool:
    return a == b or b.startswith(a + "/") or a.startswith(b + "/")


def load_stages(root: Path) -> list:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return list(repo.index.stages)


def artifacts(stages) -> dict[str, Artifact]:
    found = {}
    for s in stages:
        mechanism = s.meta.get("dp_mechanism")
        dp_outputs = [_norm(p) for p in s.meta.get("dp_outputs", [])]
        for o in s.outs:
            path = _norm(o.def_path)
            privacy = s.meta.get("privacy")
            if mechanism and privacy == "dp" and not any(_covers(p, path) for p in dp_outputs):
                privacy = "private"  # fail safe: only the listed outputs of a mechanism are dp
            found[path] = Artifact(path, s.name, privacy, o.hash_info.value if o.hash_info else None)
    return found


def declared_raw(params: dict) -> dict[str, set[str]]:
    """Raw inputs params.yaml declares: every ``private_path`` and ``public_path`` value, in any
    section (``data``, ``rl.data``, ...)."""
    found = {"private_path": set(), "public_path": set()}

    def visit(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in found and isinstance(v, str):
                    found[k].add(_norm(v))
                visit(v)

    visit(params)
    return found


def declared_private_paths(params: dict) -> list[tuple[str, str]]:
    """(params key, path) of every ``private_path`` params.yaml declares, in any section."""
    found = []

    def visit(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "private_path" and isinstance(v, str):
                    found.append((prefix + k, _norm(v)))
                visit(v, f"{prefix}{k}.")

    visit(params, "")
    return found


STAND_IN = "privacy: public stand-in"  # a SOURCE.txt line: public data shipped in place of private data
PRIVATE_FOLDER = "data/private"  # git-ignored, for a user's own private files (tracked with `dvc add`)


def _is_stand_in(root: Path, path: str) -> bool:
    source = (root / path).parent / "SOURCE.txt"
    try:
        return any(line.strip() == STAND_IN for line in source.read_text(errors="replace").splitlines())
    except OSError:
        return False


def _private_inputs_in_git(root: Path, params: dict) -> list[str]:
    """A private input tracked by git travels with every clone and push of the repository, and one
    left un-ignored is one `git add -A` away from it."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)

    try:
        if git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
            return []
    except FileNotFoundError:  # no git: nothing can be committed from here
        return []
    out = []
    for key, path in declared_private_paths(params):
        if _is_stand_in(root, path):
            continue
        fix = (f"move it under {PRIVATE_FOLDER}/ (git-ignored), `dvc add {PRIVATE_FOLDER}/<file>` to track it with "
               f"DVC, and point {key} at it")
        if git("ls-files", "--error-unmatch", "--", path).returncode == 0:
            out.append(f"params.yaml {key}: the private input {path} is tracked by git, so every clone and push of "
                       f"the repository carries it: `git rm --cached {path}`, {fix} (only public data shipped in "
                       f"its place may be committed: a SOURCE.txt beside it with the line '{STAND_IN}')")
        elif (root / path).exists() and git("check-ignore", "-q", "--", path).returncode == 1:
            out.append(f"params.yaml {key}: the private input {path} is not git-ignored, one `git add -A` from a "
                       f"commit: {fix}")
    return out


def raw_class(path: str, raw: dict[str, set[str]]) -> str:
    if path in raw["private_path"]:
        return "private"
    if path in raw["public_path"] or path.startswith(CODE) or path == "params.yaml":
        return "public"
    return "private"


def check(root: Path | str = ".", stages=None) -> tuple[list[str], dict[str, Artifact]]:
    """Violations (empty = the pipeline is sound) and every artifact with its class."""
    from dvc.dependency.param import ParamsDependency

    root = Path(root)
    stages = stages if stages is not None else load_stages(root)
    params = yaml.safe_load((root / "params.yaml").read_text()) if (root / "params.yaml").exists() else {}
    data = declared_raw(params)
    arts, problems = artifacts(stages), []
    by_stage = {s.name: s for s in stages}
    for s in _topological(stages, arts):
        name, cls, mechanism = s.name, s.meta.get("privacy"), s.meta.get("dp_mechanism")
        if cls not in RANK:
            problems.append(f"stage {name}: meta.privacy must be private, dp or public, got {cls!r}")
            continue
        if mechanism and cls != "dp":
            problems.append(f"stage {name}: declares dp_mechanism {mechanism!r} but its class is {cls!r}, not dp")
        own = [a.path for a in arts.values() if a.stage == name]
        for key in ("dp_outputs", "dp_inputs", "dp_dataset"):  # a typo here would silently change a class
            if s.meta.get(key) and not mechanism:
                problems.append(f"stage {name}: {key} is only meaningful on a dp_mechanism stage")
        if mechanism and s.meta.get("dp_dataset") not in (params.get("datasets") or {}):
            problems.append(f"stage {name}: meta.dp_dataset {s.meta.get('dp_dataset')!r} is not a dataset of "
                            f"params.yaml `datasets` {sorted(params.get('datasets') or {})}: account could not "
                            "compose its ledger entry")
        for p in s.meta.get("dp_outputs", []):
            if not any(_covers(_norm(p), o) for o in own):
                problems.append(f"stage {name}: dp_outputs entry {p!r} is not one of its outputs")
        dp_inputs = [_norm(p) for p in s.meta.get("dp_inputs", [])]
        upstream = {name} if mechanism else set()
        declared = []
        for d in s.deps:
            if isinstance(d, ParamsDependency):
                continue
            dep = _norm(d.def_path)
            declared.append(dep)
            producers = [a for p, a in arts.items() if _covers(p, dep)]
            dep_cls = max((a.privacy for a in producers), key=RANK.get) if producers else raw_class(dep, data)
            for a in producers:
                upstream |= a.mechanisms
            through_mechanism = mechanism and cls == "dp" and dep in dp_inputs
            if dep_cls not in ALLOWED[cls] and not through_mechanism:
                via = f"output of {', '.join(sorted({a.stage for a in producers}))}" if producers else "raw input"
                what = ("without listing it in meta.dp_inputs of its mechanism" if mechanism and cls == "dp" else
                        "without being a declared DP mechanism stage")
                problems.append(f"stage {name} (class {cls}) reads {dep} (class {dep_cls}, {via}) {what}")
        for p in dp_inputs:
            if p not in declared:
                problems.append(f"stage {name}: dp_inputs entry {p!r} is not one of its deps")
        for a in arts.values():
            if a.stage == name:
                a.mechanisms = set(upstream) if a.privacy == "dp" else set()
        problems += _metadata_mismatches(root, by_stage[name], arts)
    problems += _ledger_problems(stages, arts)
    problems += _evaluation_only_problems(stages, arts)
    problems += _remote_problems(stages, arts, params, data)
    problems += _undeclared_files(root, stages)
    problems += _private_inputs_in_git(root, params or {})
    return problems, arts


def _ledger_problems(stages, arts) -> list[str]:
    """Every mechanism writes a dp ledger entry and the accountant composes (depends on) it."""
    out = []
    accountants = [s for s in stages if any(_norm(o.def_path) == COMPOSED for o in s.outs)]
    composed = {_norm(d.def_path) for s in accountants for d in s.deps}
    for s in stages:
        if not s.meta.get("dp_mechanism"):
            continue
        entry = LEDGER.format(stage=s.name)  # a foreach mechanism (dp_count@<input>) has one entry per item
        if entry not in arts or arts[entry].stage != s.name or arts[entry].privacy != "dp":
            out.append(f"stage {s.name}: a dp_mechanism stage must write its ledger entry {entry} as a dp output")
        elif entry not in composed:
            out.append(f"stage {s.name}: its ledger entry {entry} is not a dep of the stage that writes {COMPOSED}, "
                       "so the release's epsilon would not count it")
    return out


def _evaluation_only_problems(stages, arts) -> list[str]:
    """Evaluation-only artifacts (``meta.evaluation_only``, and every output of an evaluation stage)
    reach evaluation stages (``meta.evaluation: true``) only."""
    from dvc.dependency.param import ParamsDependency

    out, reserved = [], {}
    for s in _topological(stages, arts):
        own = [a.path for a in arts.values() if a.stage == s.name]
        for p in s.meta.get("evaluation_only", []):
            if not any(_covers(_norm(p), o) for o in own):
                out.append(f"stage {s.name}: evaluation_only entry {p!r} is not one of its outputs")
            reserved[_norm(p)] = f"{s.name} (meta.evaluation_only)"
        evaluation = bool(s.meta.get("evaluation", False))
        for d in s.deps:
            dep = "" if isinstance(d, ParamsDependency) else _norm(d.def_path)
            for path, why in list(reserved.items()):
                if dep and _covers(path, dep) and not evaluation:
                    out.append(f"stage {s.name} reads {dep}, reserved for evaluation by {why}, but is not an "
                               "evaluation stage (meta.evaluation: true): an evaluation-only model must never "
                               "feed training")
        if evaluation:
            reserved.update({o: f"{s.name} (an evaluation stage's output)" for o in own})
    return out


def _remote_problems(stages, arts, params: dict, data: dict) -> list[str]:
    """A stage that may send its inputs to a remote backend (``meta.remote_backend`` names the params
    section holding ``backend`` and ``allow_remote_private``) must not read private data while that
    backend is remote, unless the section opts in explicitly."""
    from dvc.dependency.param import ParamsDependency

    out = []
    for s in stages:
        section_name = s.meta.get("remote_backend")
        if not section_name:
            continue
        section = params
        for key in section_name.split("."):
            section = (section or {}).get(key) if isinstance(section, dict) else None
        if not isinstance(section, dict) or "backend" not in section:
            out.append(f"stage {s.name}: meta.remote_backend names params section {section_name!r}, which has no backend")
            continue
        if section["backend"] in ("local", "none") or section.get("allow_remote_private", False):
            continue
        for d in s.deps:
            if isinstance(d, ParamsDependency):
                continue
            dep = _norm(d.def_path)
            producers = [a for p, a in arts.items() if _covers(p, dep)]
            cls = max((a.privacy for a in producers), key=RANK.get) if producers else raw_class(dep, data)
            if cls == "private":
                out.append(f"stage {s.name} sends its inputs to the remote backend {section['backend']!r} "
                           f"({section_name}.backend) and reads private {dep}, without "
                           f"{section_name}.allow_remote_private: true")
    return out


def referenced_paths(module) -> set[str]:
    """Project paths a stage module refers to: its module-level constants (also those it imports,
    nested in dicts and tuples) and the string literals in its source."""
    found: set[str] = set()

    def visit(value, depth=0):
        if isinstance(value, (str, os.PathLike)) and PROJECT_PATH.match(_norm(str(value))):
            found.add(_norm(str(value)))
        elif isinstance(value, dict) and depth < 3:
            for v in value.values():
                visit(v, depth + 1)
        elif isinstance(value, (list, tuple, set, frozenset)) and depth < 3:
            for v in value:
                visit(v, depth + 1)

    for name, value in vars(module).items():
        if not name.startswith("__"):
            visit(value)
    source = Path(module.__file__).read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            visit(node.value)
    return found


def _undeclared_files(root: Path, stages) -> list[str]:
    """Data paths a stage's code refers to that are neither deps nor outs of it, and project code it
    imports (transitively) that no dep covers (foreach stages: of any of their instances, as they
    share one module)."""
    from dvc.dependency.param import ParamsDependency

    from dpinstruct.tools import layout

    declared: dict[str, set[str]] = {}
    modules: dict[str, str] = {}
    for s in stages:
        match = re.match(r"python -m (stages\.\w+)", s.cmd or "")
        if not match:
            continue
        base = s.name.split("@")[0]
        modules[base] = match.group(1)
        paths = {_norm(d.def_path) for d in s.deps if not isinstance(d, ParamsDependency)}
        declared.setdefault(base, set()).update(paths | {_norm(o.def_path) for o in s.outs})
    out = []
    for base, module_name in sorted(modules.items()):
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            out.append(f"stage {base}: cannot import {module_name} to check the files it opens ({e})")
            continue
        for path in sorted(referenced_paths(module)):
            if not any(_covers(d, path) for d in declared[base] | {RESUME.format(stage=base)}):
                out.append(f"stage {base}: its code refers to {path}, which is neither a dep nor an out in dvc.yaml")
        module_file = Path(*module_name.split(".")).with_suffix(".py")
        if (root / module_file).is_file():  # a copy of dvc.yaml elsewhere has no code to follow
            for path in layout.undeclared_code(root, module_file, declared[base]):
                out.append(f"stage {base}: its code imports {path}, which is not a dep in dvc.yaml "
                           "(`dvc repro` would not re-run the stage when it changes)")
    return out


def _topological(stages, arts):
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(s.name for s in stages)
    for s in stages:
        for d in s.deps:
            for a in arts.values():
                if _covers(a.path, _norm(d.def_path)) and a.stage != s.name:
                    g.add_edge(a.stage, s.name)
    order = {name: i for i, name in enumerate(nx.topological_sort(g))}
    return sorted(stages, key=lambda s: order[s.name])


def _metadata_mismatches(root: Path, stage, arts) -> list[str]:
    from dpinstruct.io.artifacts import read_metadata

    out = []
    for a in (a for a in arts.values() if a.stage == stage.name and a.path.endswith(".parquet")):
        if (root / a.path).is_file():
            found = read_metadata(root / a.path).get("privacy")
            if found != a.privacy:
                out.append(f"{a.path}: Parquet metadata says privacy {found!r}, stage {a.stage} declares {a.privacy!r}")
    return out


def _fmt(eps) -> str:
    return f"{eps:.3f}" if isinstance(eps, (int, float)) else str(eps)  # non-private runs record "inf"


def report(root: Path | str, stages, arts: dict[str, Artifact], *, publish: bool = False,
           params_filter=None) -> str:
    """The lineage report of the given stages and artifacts. ``publish`` (for a release bundle)
    withholds the md5 of private artifacts: the hash of a small private file (a count, a metric) can
    be brute-forced. ``params_filter`` (values -> values), if given, edits each stage's params before
    they are listed (the bundle drops another dataset's budget a shared stage declares)."""
    from dvc.dependency.param import ParamsDependency

    root = Path(root)
    ledger = json.loads((root / "metrics/privacy.json").read_text()) if (root / "metrics/privacy.json").exists() else {}
    spent = {m: entry.get("epsilon") for m, entry in ledger.get("stages", {}).items()}
    # one guarantee per private dataset: an artifact that went through all of a dataset's mechanisms
    # carries that dataset's composed figure (sequential within a part, the maximum across parts)
    by_dataset: dict[str, set] = {}
    for m, entry in ledger.get("stages", {}).items():
        by_dataset.setdefault(entry.get("dataset", ""), set()).add(m)

    def epsilon(a: Artifact) -> str:
        if a.privacy != "dp":
            return "n/a (private)" if a.privacy == "private" else "0 (public)"
        # one figure per private dataset the artifact descends from (an RLHF policy on the release:
        # the instructions' and the preference pairs'), each dataset's guarantee stated separately
        parts = []
        for dataset, mechanisms in sorted(by_dataset.items()):
            mine = a.mechanisms & mechanisms
            if mine == mechanisms:
                guarantee = ledger.get("datasets", {}).get(dataset, ledger)
                parts.append(f"{_fmt(guarantee['epsilon'])} composed ({' + '.join(sorted(mechanisms))}), "
                             f"delta {guarantee['delta']:g}")
            elif mine:
                parts.append("; ".join(f"{m}: {_fmt(spent.get(m, '?'))}" for m in sorted(mine)))
            else:
                continue
            if len({d for d, ms in by_dataset.items() if a.mechanisms & ms}) > 1:
                parts[-1] = f"{dataset}: {parts[-1]}"
        unknown = a.mechanisms - set().union(*by_dataset.values()) if by_dataset else a.mechanisms
        parts += [f"{m}: {_fmt(spent.get(m, '?'))}" for m in sorted(unknown)]
        return "; ".join(parts) or "0"

    lines = ["# Lineage report", "", "Generated by `dpinstruct lineage --report` from dvc.yaml, dvc.lock and "
             "metrics/privacy.json. Class rules: dpinstruct/tools/lineage.py.", "",
             "| artifact | stage | class | md5 (dvc.lock) | epsilon spent on the way |", "|---|---|---|---|---|"]
    def md5(a: Artifact) -> str:
        return "withheld (private)" if publish and a.privacy == "private" else f"`{a.md5 or 'not in dvc.lock'}`"

    lines += [f"| `{a.path}` | {a.stage} | {a.privacy} | {md5(a)} | {epsilon(a)} |" for a in arts.values()]
    lines += ["", "## Stage parameters (values from dvc.lock)", ""]
    for s in stages:
        values = {}
        for d in (d for d in s.deps if isinstance(d, ParamsDependency)):
            values.update((d.hash_info.value if d.hash_info else None) or {k: "?" for k in d.params})
        if params_filter is not None:
            values = params_filter(values)
        mech = f", DP mechanism `{s.meta['dp_mechanism']}`" if s.meta.get("dp_mechanism") else ""
        lines.append(f"- **{s.name}** (class {s.meta.get('privacy')}{mech}): "
                     f"`{json.dumps(values, sort_keys=True, default=str)}`")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=".", help="project root (default: current directory)")
    parser.add_argument("--report", help="also write the Markdown lineage report to this path")


def run(args: argparse.Namespace) -> int:
    """`dpinstruct lineage`: 0 when the pipeline is sound, 1 with every violation printed."""
    stages = load_stages(Path(args.root))
    problems, arts = check(args.root, stages)
    for p in problems:
        print(f"LINEAGE VIOLATION: {p}", file=sys.stderr)
    if problems:
        print(f"lineage check failed: {len(problems)} violation(s); no report written", file=sys.stderr)
        return 1
    print(f"lineage check passed: {len(stages)} stages, {len(arts)} artifacts")
    if args.report:
        Path(args.report).write_text(report(args.root, stages, arts))
        print(f"lineage report written to {args.report}")
    return 0
