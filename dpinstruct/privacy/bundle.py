"""Release bundle: the one folder of this project meant to leave the data owner's hands.

A command, not a stage::

    dpinstruct export --out release-bundle            # the release and its privacy record
    dpinstruct export --out b --include data/adapters/generator   # plus other dp/public outputs

Why a bundle: the git repository and the DVC cache of a project over private data are private.
dvc.lock records the md5 and size of every private output (a small private metrics file can be
brute-forced from its md5), and the committed private-class metrics (prepare's counts, training
curves of private batches, the evaluation on the private test split) are un-noised. Publish the
bundle, never the repository.

The bundle holds: ``instructions.parquet`` (the released set), ``privacy.json`` (the composed
(epsilon, delta)), ``ledger/<stage>.json`` (each mechanism's entry), ``lineage.md`` (the lineage
report with the md5 of private artifacts withheld), ``DATASET_CARD.md`` and ``MANIFEST.json``
(every file's sha256, source path and class). It refuses, before writing anything: a failed
lineage check; any file whose class is not dp or public (for Parquet, by its metadata too); any
source whose stage is not up to date with dvc.lock (the ledger would not describe it), and a
pipeline whose memorisation gate (stage `memorisation`) did not pass on the current release.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dpinstruct.io.artifacts import file_digest, read_metadata
from dpinstruct.privacy import lineage

MEMORISATION_GATE = "memorisation"  # the stage that counts private rows copied into the release
RELEASE = "data/release/instructions.parquet"
COMPOSED = "metrics/privacy.json"
LEDGER_DIR = "metrics/privacy"
PUBLISHABLE = ("dp", "public")


class ExportError(Exception):
    """The bundle cannot be written as asked; nothing was written."""


def _classify(root: Path, path: str, arts: dict[str, lineage.Artifact]) -> lineage.Artifact:
    art = next((a for p, a in arts.items() if lineage._covers(p, path) and len(p) <= len(path)), None)
    if art is None:
        raise ExportError(f"{path} is not an output of any stage in dvc.yaml: only pipeline outputs can be exported")
    if art.privacy not in PUBLISHABLE:
        raise ExportError(f"{path} is class {art.privacy!r} (stage {art.stage}): refusing to export anything private")
    file = root / path
    if not file.exists():
        raise ExportError(f"{path} does not exist: run `dvc repro` (or `dvc pull`) first")
    parquets = [file] if file.suffix == ".parquet" else sorted(file.rglob("*.parquet")) if file.is_dir() else []
    for pq in parquets:
        found = read_metadata(pq).get("privacy")
        if found not in PUBLISHABLE:
            raise ExportError(f"{pq.relative_to(root)}: its Parquet metadata says privacy {found!r}: refusing to export")
    return art


def _stale_stages(root: Path, stages: set[str]) -> dict:
    from dvc.repo import Repo

    stale: dict = {}
    with contextlib.chdir(root), Repo(".") as repo:  # DVC resolves targets from the working directory
        for name in sorted(stages):
            stale.update(repo.status(targets=[name]))
    return stale


def dataset_card(privacy: dict, ledger: list[dict], rows: int, lock_params: dict[str, dict]) -> str:
    eps = privacy["epsilon"]
    lines = [
        "# Dataset card: DP synthetic instructions", "",
        "Synthetic user instructions released under differential privacy by the `dpinstruct` pipeline "
        "(Yu, Kairouz, Oh, Xu, ICML 2024: a DP-LoRA fine-tuned generator, Algorithm 1, then DP histogram "
        "resampling, Algorithm 2). No row is a user's instruction; every row was sampled from a generator "
        "trained with DP and selected with a DP histogram.", "",
        "## Privacy guarantee", "",
        f"- **(epsilon, delta) = ({eps if isinstance(eps, str) else f'{eps:.4f}'}, {privacy['delta']:g})** for the "
        f"whole release (every DP mechanism composed: {privacy['accountant']}; opacus PRV cross-check "
        f"{privacy.get('epsilon_prv')}).",
        f"- Neighbouring relation: `{privacy['neighbouring']}` (add or remove one "
        f"{'user with all their instructions' if privacy['neighbouring'].endswith('_user') else 'private instruction'}).",
        "- The number of private records is not published: sampling rate, steps and noise come from the "
        "pipeline's params, independent of it.",
        "- DP randomness came from a secret key or the OS's CSPRNG, never from a seed in the repository.", "",
        "| mechanism (stage) | noise multiplier | sampling rate | steps | sensitivity | epsilon alone |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {e['mechanism']} ({e['stage']}) | {e['noise_multiplier']} | {e['sampling_rate']} | {e['steps']} "
              f"| {e['sensitivity']} | {e['epsilon']} |" for e in ledger]
    lines += ["", "## Contents", "", f"- `instructions.parquet`: {rows} instructions (`id`, `instruction`, `cluster`).",
              "- `privacy.json`, `ledger/`: the composed guarantee and each mechanism's entry (dp_accounting events).",
              "- `lineage.md`: which artifact came from which data through which mechanism (private hashes withheld).",
              "", "## Parameters of the DP stages (from dvc.lock)", ""]
    lines += [f"- **{stage}**: `{json.dumps(values, sort_keys=True, default=str)}`" for stage, values in lock_params.items()]
    lines += ["", "## Intended use and limits", "",
              "Instructions for annotation and alignment (SFT, RLHF). DP bounds what any single user's instruction can "
              "change in this set; it does not make the content safe or correct: review before use.", ""]
    return "\n".join(lines)


def export(root: Path | str, out: Path | str, *, include: list[str] = (), force: bool = False) -> dict:
    """Write the bundle to ``out``; returns the manifest. Raises ExportError, writing nothing."""
    from dvc.dependency.param import ParamsDependency

    root, out = Path(root), Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} exists and is not empty (use --force to replace it)")
    stages = lineage.load_stages(root)
    problems, arts = lineage.check(root, stages)
    if problems:
        raise ExportError(f"the lineage check failed ({len(problems)} violation(s)), first: {problems[0]}")
    entries = sorted(p.relative_to(root).as_posix() for p in (root / LEDGER_DIR).glob("*.json"))
    sources = {RELEASE: "instructions.parquet", COMPOSED: "privacy.json",
               **{e: f"ledger/{Path(e).name}" for e in entries},
               **{lineage._norm(p): f"extra/{lineage._norm(p)}" for p in include}}
    found = {path: _classify(root, path, arts) for path in sources}
    # The memorisation gate must have passed on this very release: a failed gate leaves its stage
    # out of date with dvc.lock, so the same check refuses the export.
    gates = {s.name for s in stages} & {MEMORISATION_GATE}
    stale = _stale_stages(root, {a.stage for a in found.values()} | gates)
    if stale:
        name, status = next(iter(stale.items()))
        raise ExportError(f"stage {name} is not up to date with dvc.lock ({status}): run `dvc repro` first")

    privacy = json.loads((root / COMPOSED).read_text())
    ledger = [json.loads((root / e).read_text()) for e in entries]
    by_name = {s.name: s for s in stages}
    lock_params = {}
    for name in sorted(privacy.get("stages", {})):
        values = {}
        for d in (d for d in by_name[name].deps if isinstance(d, ParamsDependency)):
            values.update((d.hash_info.value if d.hash_info else None) or {})
        lock_params[name] = values
    import pyarrow.parquet as pq

    rows = pq.read_metadata(root / RELEASE).num_rows
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        for src, dst in sources.items():
            target = staging / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (root / src).is_dir() else shutil.copy2)(root / src, target)
        (staging / "lineage.md").write_text(lineage.report(root, stages, arts, publish=True))
        (staging / "DATASET_CARD.md").write_text(dataset_card(privacy, ledger, rows, lock_params))
        manifest = {"files": {}}
        for f in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = f.relative_to(staging).as_posix()
            src = next((s for s, d in sources.items() if rel == d or rel.startswith(d + "/")), None)
            manifest["files"][rel] = {"sha256": file_digest(f), "source": src,
                                      "privacy": found[src].privacy if src else "dp",
                                      "stage": found[src].stage if src else "export"}
        (staging / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="release-bundle", help="folder to write (default: release-bundle)")
    parser.add_argument("--root", default=".", help="project root (default: current directory)")
    parser.add_argument("--include", nargs="*", default=[], help="further dp or public outputs to add (e.g. the adapter)")
    parser.add_argument("--force", action="store_true", help="replace an existing, non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    """`dpinstruct export`: 0 with the bundle written, 2 when refused (nothing written)."""
    try:
        manifest = export(args.root, args.out, include=args.include, force=args.force)
    except ExportError as e:
        print(f"export refused: {e}", file=sys.stderr)
        return 2
    print(f"release bundle written to {args.out}: {len(manifest['files'])} files (see MANIFEST.json)")
    return 0
