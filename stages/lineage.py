"""Privacy lineage: check the privacy class of every artifact on the DVC graph, and report it.

A command, not a stage (it reads dvc.yaml and dvc.lock, which stages must not):
``python -m stages.lineage`` checks; ``python -m stages.lineage --report metrics/lineage.md`` also
writes the Markdown report (path, md5 from dvc.lock, stage, params, class, epsilon).

Classes (``meta.privacy`` of each stage in dvc.yaml, and ``dpinstruct.privacy`` in each Parquet):
  private  raw private data, or derived from it without a DP mechanism;
  dp       the output of a DP mechanism stage (``meta.dp_mechanism``), or derived from dp and
           public artifacts only (post-processing);
  public   derived from public inputs only.
An output listed in a stage's ``meta.private_outputs`` is private whatever the stage's class.
Inputs no stage produces: the resolved ``data.private_path`` is private; ``data.public_path``,
code under stages/ and params.yaml are public; ANY OTHER raw input counts as private (fail safe:
a new input is private until it is declared in params.yaml as the public set).

Rule, checked on every edge (dependency D -> stage S):
  S private: anything;  S dp with a dp_mechanism: anything (its ledger entry accounts for it);
  S dp otherwise: D dp or public;  S public: D public;  a dp_mechanism on a non-dp stage is an error.
By induction over the DAG no dp or public artifact then has a private ancestor except through a
declared DP mechanism stage. Parquet outputs present on disk must carry their stage's class.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

RANK = {"public": 0, "dp": 1, "private": 2}  # how restrictive a class is
ALLOWED = {"private": {"public", "dp", "private"}, "dp": {"public", "dp"}, "public": {"public"}}


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
        private_outputs = [_norm(p) for p in s.meta.get("private_outputs", [])]
        for o in s.outs:
            path = _norm(o.def_path)
            privacy = "private" if any(_covers(p, path) for p in private_outputs) else s.meta.get("privacy")
            found[path] = Artifact(path, s.name, privacy, o.hash_info.value if o.hash_info else None)
    return found


def raw_class(path: str, data: dict) -> str:
    if path == _norm(str(data.get("private_path", ""))):
        return "private"
    if path == _norm(str(data.get("public_path", ""))) or path.startswith("stages/") or path == "params.yaml":
        return "public"
    return "private"


def check(root: Path | str = ".", stages=None) -> tuple[list[str], dict[str, Artifact]]:
    """Violations (empty = the pipeline is sound) and every artifact with its class."""
    from dvc.dependency.param import ParamsDependency

    root = Path(root)
    stages = stages if stages is not None else load_stages(root)
    params = yaml.safe_load((root / "params.yaml").read_text()) if (root / "params.yaml").exists() else {}
    data = params.get("data", {})
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
        for p in s.meta.get("private_outputs", []):  # a typo here would silently leave an output dp
            if not any(_covers(_norm(p), o) for o in own):
                problems.append(f"stage {name}: private_outputs entry {p!r} is not one of its outputs")
        upstream = {name} if mechanism else set()
        for d in s.deps:
            if isinstance(d, ParamsDependency):
                continue
            dep = _norm(d.def_path)
            producers = [a for p, a in arts.items() if _covers(p, dep)]
            dep_cls = max((a.privacy for a in producers), key=RANK.get) if producers else raw_class(dep, data)
            for a in producers:
                upstream |= a.mechanisms
            if dep_cls not in ALLOWED[cls] and not (cls == "dp" and mechanism):
                via = f"output of {', '.join(sorted({a.stage for a in producers}))}" if producers else "raw input"
                problems.append(f"stage {name} (class {cls}) reads {dep} (class {dep_cls}, {via}) "
                                f"without being a declared DP mechanism stage")
        for a in arts.values():
            if a.stage == name:
                a.mechanisms = set(upstream) if a.privacy == "dp" else set()
        problems += _metadata_mismatches(root, by_stage[name], arts)
    return problems, arts


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
    from stages.artifacts import read_metadata

    out = []
    for a in (a for a in arts.values() if a.stage == stage.name and a.path.endswith(".parquet")):
        if (root / a.path).is_file():
            found = read_metadata(root / a.path).get("privacy")
            if found != a.privacy:
                out.append(f"{a.path}: Parquet metadata says privacy {found!r}, stage {a.stage} declares {a.privacy!r}")
    return out


def _fmt(eps) -> str:
    return f"{eps:.3f}" if isinstance(eps, (int, float)) else str(eps)  # non-private runs record "inf"


def report(root: Path | str, stages, arts: dict[str, Artifact]) -> str:
    from dvc.dependency.param import ParamsDependency

    root = Path(root)
    ledger = json.loads((root / "metrics/privacy.json").read_text()) if (root / "metrics/privacy.json").exists() else {}
    spent = {m: entry.get("epsilon") for m, entry in ledger.get("stages", {}).items()}
    composed = set(spent)

    def epsilon(a: Artifact) -> str:
        if a.privacy != "dp":
            return "n/a (private)" if a.privacy == "private" else "0 (public)"
        if composed and a.mechanisms == composed:
            return f"{_fmt(ledger['epsilon'])} composed ({' + '.join(sorted(composed))}), delta {ledger['delta']:g}"
        return "; ".join(f"{m}: {_fmt(spent.get(m, '?'))}" for m in sorted(a.mechanisms)) or "0"

    lines = ["# Lineage report", "", "Generated by `python -m stages.lineage --report` from dvc.yaml, dvc.lock and "
             "metrics/privacy.json. Class rules: stages/lineage.py.", "",
             "| artifact | stage | class | md5 (dvc.lock) | epsilon spent on the way |", "|---|---|---|---|---|"]
    lines += [f"| `{a.path}` | {a.stage} | {a.privacy} | `{a.md5 or 'not in dvc.lock'}` | {epsilon(a)} |"
              for a in arts.values()]
    lines += ["", "## Stage parameters (values from dvc.lock)", ""]
    for s in stages:
        values = {}
        for d in (d for d in s.deps if isinstance(d, ParamsDependency)):
            values.update((d.hash_info.value if d.hash_info else None) or {k: "?" for k in d.params})
        mech = f", DP mechanism `{s.meta['dp_mechanism']}`" if s.meta.get("dp_mechanism") else ""
        lines.append(f"- **{s.name}** (class {s.meta.get('privacy')}{mech}): "
                     f"`{json.dumps(values, sort_keys=True, default=str)}`")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=".", help="project root (default: current directory)")
    parser.add_argument("--report", help="also write the Markdown lineage report to this path")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
