"""Release bundle: what this project publishes, packed with its privacy record.

A command, not a stage::

    dpinstruct export --out release-bundle            # the release and its privacy record
    dpinstruct export --out b --include data/adapters/generator   # plus other dp/public outputs
    dpinstruct export --out b --non-private           # a privacy.epsilon: .inf baseline, labelled NOT private

Threat model (stated once, in the package docstring of ``dpinstruct.privacy``): published are this
bundle and every dp-class output; the attacker holds all of it plus params.yaml and the code. The
git repository (dvc.lock, private metrics) and the DVC remote hold private information and stay
with the data owner: dvc.lock records the md5 and size of every private output (a small private
metrics file can be brute-forced from its md5), and the committed private-class metrics (prepare's
counts, training curves of private batches, the evaluation on the private test split) are
un-noised. So what leaves is dp or public only, and the bundle is how it leaves: never the
repository, never the remote.

The bundle holds: ``instructions.parquet`` (the released set), ``privacy.json`` (the composed
(epsilon, delta)), ``ledger/<stage>.json`` (each mechanism's entry), ``lineage.md`` (the lineage
report with the md5 of private artifacts withheld), ``DATASET_CARD.md`` and ``MANIFEST.json``
(every file's sha256, source path and class).

A run spends budgets on several private datasets (``instructions``, ``imdb``, ``hh_rlhf``: one
guarantee each, ``dpinstruct.privacy.composition``); the bundle releases one of them, the one
params.yaml ``datasets`` marks ``release: true`` (``release_dataset``), and carries that dataset's
mechanisms only: ``ledger/`` holds the entries whose ``dataset`` is it; ``privacy.json`` is written, not copied: the release's guarantee (the top-level
``GUARANTEE_FIELDS`` of metrics/privacy.json), ``datasets`` and ``stages`` restricted to
it; the card lists those stages and their dvc.lock params (without another dataset's
budget section, e.g. ``rl.privacy``, that a shared stage such as ``dp_count`` declares); and
``lineage.md`` covers only the release's ancestors in the DAG (and those of ``--include``d files).
An included file that descends from another dataset's mechanism is refused.

It refuses, before writing anything: a failed lineage check; any file whose class is not dp or
public (for Parquet, by its metadata too); a ledger entry naming no dataset, or entries of the
released dataset other than the stages metrics/privacy.json composes for it; any source whose stage
is not up to date with dvc.lock (the ledger would not describe it); a pipeline whose memorisation
gate (stage `memorisation`) did not pass on the current release; and a release that is not
differentially private (``metrics/privacy.json`` says ``private: false`` or an infinite epsilon: the
``privacy.epsilon: .inf`` baseline) unless ``--non-private`` is given, in which case the card, the
manifest and the lineage report say plainly that the set is NOT differentially private and make no
DP claim (the flag on a private release is refused too: a label must match its ledger).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dpinstruct.io.artifacts import file_digest, read_metadata
from dpinstruct.tools import lineage

MEMORISATION_GATE = "memorisation"  # the stage that counts private rows copied into the release
RELEASE = "data/release/instructions.parquet"
COMPOSED = "metrics/privacy.json"
LEDGER_DIR = "metrics/privacy"
PUBLISHABLE = ("dp", "public")
# the release's guarantee at the top level of metrics/privacy.json (stages/account.py); nothing else
# of it is copied but ``datasets`` and ``stages`` restricted to the release's dataset
GUARANTEE_FIELDS = ("epsilon", "delta", "epsilon_prv", "target_epsilon", "within_budget", "private", "accountant",
                    "neighbouring")


def release_dataset(root: Path) -> str:
    """The private dataset the release is made from: the one params.yaml ``datasets`` marks release."""
    import yaml

    from dpinstruct.io.settings.privacy import Datasets

    return Datasets.from_params(yaml.safe_load((Path(root) / "params.yaml").read_text(encoding="utf-8"))).release


class ExportError(Exception):
    """The bundle cannot be written as asked; nothing was written."""


def is_private(privacy: dict) -> bool:
    """Whether the composed ledger states a DP guarantee: ``private`` not false and a finite epsilon
    (a non-private run records epsilon "inf"; anything unreadable counts as not private)."""
    if privacy.get("private") is False:
        return False
    try:
        return math.isfinite(float(privacy.get("epsilon")))
    except (TypeError, ValueError):
        return False


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


def dataset_entries(root: Path, entries: list[str], dataset: str) -> dict[str, dict]:
    """The ledger entries (path -> entry) of ``dataset``. An entry naming no dataset is refused: it
    cannot be told apart from another dataset's."""
    mine = {}
    for path in entries:
        entry = json.loads((root / path).read_text())
        if not entry.get("dataset"):
            raise ExportError(f"{path} names no dataset, so it cannot be told whether it belongs to the release "
                              f"(dataset {dataset!r}): re-run its stage (`dvc repro`)")
        if entry["dataset"] == dataset:
            mine[path] = entry
    return mine


def release_privacy(privacy: dict, dataset: str) -> dict:
    """metrics/privacy.json restricted to ``dataset``: the top-level guarantee (``GUARANTEE_FIELDS``),
    its entry of ``datasets`` and its ``stages``; nothing of another dataset."""
    out = {k: privacy[k] for k in GUARANTEE_FIELDS if k in privacy}
    if "datasets" in privacy:
        out["datasets"] = {dataset: privacy["datasets"][dataset]}
    out["stages"] = {name: e for name, e in privacy.get("stages", {}).items() if e.get("dataset") == dataset}
    return out


def _without(values: dict, path: list[str]) -> dict:
    if path[0] not in values:
        return values
    rest = dict(values)
    if len(path) == 1:
        del rest[path[0]]
    elif isinstance(rest[path[0]], dict):
        rest[path[0]] = _without(rest[path[0]], path[1:])
    return rest


def drop_params(values: dict, hidden: set[str]) -> dict:
    """dvc.lock params of a stage (keys dotted as declared: ``privacy``, ``rl.privacy``, ``rl``) without
    the ``hidden`` sections, also where they are nested in a declared parent section."""
    out = {}
    for key, value in values.items():
        if any(key == h or key.startswith(h + ".") for h in hidden):
            continue
        for h in hidden:
            if h.startswith(key + ".") and isinstance(value, dict):
                value = _without(value, h[len(key) + 1:].split("."))
        out[key] = value
    return out


def upstream(stages, arts: dict[str, lineage.Artifact], targets) -> tuple[list, dict[str, lineage.Artifact]]:
    """The stages and artifacts upstream of ``targets`` (inclusive) in the DVC DAG: from each target
    to the stage that outputs it, then through that stage's deps to their producers (in the order of
    ``stages`` and ``arts``)."""
    from dvc.dependency.param import ParamsDependency

    by_name = {s.name: s for s in stages}
    todo, seen_arts, seen_stages = [lineage._norm(t) for t in targets], set(), set()
    while todo:
        path = todo.pop()
        for p, a in arts.items():
            if p in seen_arts or not lineage._covers(p, path):
                continue
            seen_arts.add(p)
            if a.stage not in seen_stages:
                seen_stages.add(a.stage)
                todo += [lineage._norm(d.def_path) for d in by_name[a.stage].deps
                         if not isinstance(d, ParamsDependency)]
    return ([s for s in stages if s.name in seen_stages], {p: a for p, a in arts.items() if p in seen_arts})


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
        f"whole release (every DP mechanism on the private instructions composed: {privacy['accountant']}; "
        f"opacus PRV cross-check {privacy.get('epsilon_prv')}).",
        f"- Neighbouring relation: `{privacy['neighbouring']}` (add or remove one "
        f"{'user with all their instructions' if privacy['neighbouring'].endswith('_user') else 'private instruction'}).",
        "- The number of private records is not published: sampling rate, steps and noise come from the "
        "pipeline's params, independent of it.",
        "- DP randomness came from a secret key or the OS's CSPRNG, never from a seed in the repository.", "",
        "| mechanism (stage) | noise multiplier | sampling rate | steps | sensitivity | epsilon alone |",
        "|---|---|---|---|---|---|",
    ]
    # an event of several components states no single (sigma, q, T): "-" (ledger.make_entry)
    lines += [f"| {e['mechanism']} ({e['stage']}) | {e.get('noise_multiplier', '-')} | {e.get('sampling_rate', '-')} "
              f"| {e.get('steps', '-')} | {e['sensitivity']} | {e['epsilon']} |" for e in ledger]
    lines += ["", "## Contents", "", f"- `instructions.parquet`: {rows} instructions (`id`, `instruction`, `cluster`).",
              ("- `privacy.json`, `ledger/`: the composed guarantee and the entry of each mechanism on the private "
               "instructions (dp_accounting events)."),
              "- `lineage.md`: which artifact came from which data through which mechanism (private hashes withheld).",
              "", "## Parameters of the DP stages (from dvc.lock)", ""]
    lines += params_lines(lock_params)
    lines += ["", "## Intended use and limits", "",
              "Instructions for annotation and alignment (SFT, RLHF). DP bounds what any single user's instruction can "
              "change in this set; it does not make the content safe or correct: review before use.", ""]
    return "\n".join(lines)


NOT_PRIVATE = "NOT differentially private"


def params_lines(lock_params: dict[str, dict]) -> list[str]:
    """One card line per accounted stage: the params it ran with, as dvc.lock records them."""
    return [f"- **{stage}**: `{json.dumps(values, sort_keys=True, default=str)}`" for stage, values in lock_params.items()]


def non_private_card(privacy: dict, rows: int, lock_params: dict[str, dict]) -> str:
    """The card of a release exported with ``--non-private``: no DP claim, said plainly."""
    lines = [
        f"# Dataset card: synthetic instructions, {NOT_PRIVATE}", "",
        f"**This set is {NOT_PRIVATE}. It carries no privacy guarantee.**", "",
        "It was made by the `dpinstruct` pipeline run as a non-private baseline (composed epsilon = "
        f"{privacy.get('epsilon')!s}, `privacy.epsilon: .inf`) and exported with `dpinstruct export --non-private`. "
        "The generator was fine-tuned on private user instructions without a privacy budget: rows may repeat, "
        "paraphrase or reveal those instructions. Share it only where the private training data itself may go.", "",
        "## Contents", "", f"- `instructions.parquet`: {rows} instructions (`id`, `instruction`, `cluster`).",
        "- `privacy.json`, `ledger/`: the run's accounting, which records an infinite epsilon (no guarantee).",
        "- `lineage.md`: which artifact came from which data (private hashes withheld); its class `dp` names a "
        "pipeline class only and carries no guarantee for this run.",
        "", "## Parameters of the pipeline's accounted stages (from dvc.lock)", ""]
    lines += params_lines(lock_params)
    lines += ["", "## Intended use and limits", "",
              "A baseline for comparison with DP releases of the same pipeline, for the data owner and whoever may "
              "see the private data. Not for publication as private data. Review the content before use.", ""]
    return "\n".join(lines)


def export(root: Path | str, out: Path | str, *, include: list[str] = (), force: bool = False,
           non_private: bool = False) -> dict:
    """Write the bundle to ``out``; returns the manifest. Raises ExportError, writing nothing.
    A release that is not differentially private is refused unless ``non_private``."""
    from dvc.dependency.param import ParamsDependency

    root, out = Path(root), Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} exists and is not empty (use --force to replace it)")
    stages = lineage.load_stages(root)
    problems, arts = lineage.check(root, stages)
    if problems:
        raise ExportError(f"the lineage check failed ({len(problems)} violation(s)), first: {problems[0]}")
    # only the release dataset's entries: another dataset's mechanisms (and their params) stay out
    dataset = release_dataset(root)
    mine = dataset_entries(root, sorted(p.relative_to(root).as_posix() for p in (root / LEDGER_DIR).glob("*.json")),
                           dataset)
    entries = sorted(mine)
    extras = [lineage._norm(p) for p in include]
    sources = {RELEASE: "instructions.parquet", COMPOSED: "privacy.json",
               **{e: f"ledger/{Path(e).name}" for e in entries},
               **{p: f"extra/{p}" for p in extras}}
    found = {path: _classify(root, path, arts) for path in sources}
    composed = json.loads((root / COMPOSED).read_text())
    if "datasets" in composed and dataset not in composed["datasets"]:
        raise ExportError(f"{COMPOSED} states no guarantee for the release's dataset {dataset!r}: run `dvc repro`")
    privacy = release_privacy(composed, dataset)
    own = {e.get("stage") for e in mine.values()}
    if own != set(privacy["stages"]):
        raise ExportError(f"the ledger entries of dataset {dataset!r} ({sorted(own, key=str)}) are not the stages "
                          f"{COMPOSED} composes for it ({sorted(privacy['stages'])}): run `dvc repro`")
    for path in (p for p in sources if p != COMPOSED):  # the accountant reads every dataset's entries
        foreign = found[path].mechanisms - own
        if foreign:
            raise ExportError(f"{path} descends from DP mechanisms not of dataset {dataset!r} "
                              f"({', '.join(sorted(foreign))}): the bundle carries that dataset's privacy record "
                              "only, so it cannot state this file's guarantee")
    hidden = {d["budget"] for name, d in composed.get("datasets", {}).items()
              if name != dataset and isinstance(d, dict) and d.get("budget")}
    private = is_private(privacy)
    if not private and not non_private:
        raise ExportError(f"{COMPOSED} says this release is {NOT_PRIVATE} (private: {privacy.get('private')}, "
                          f"epsilon {privacy.get('epsilon')!r}; privacy.epsilon: .inf makes the non-private baseline): "
                          "refusing to export it as a DP release; pass --non-private to export it labelled as NOT "
                          "differentially private")
    if private and non_private:
        raise ExportError(f"--non-private was given but {COMPOSED} states a DP guarantee (epsilon "
                          f"{privacy.get('epsilon')!r}): drop the flag, so the bundle's label matches its ledger")
    # The memorisation gate must have passed on this very release: a failed gate leaves its stage
    # out of date with dvc.lock, so the same check refuses the export.
    gates = {s.name for s in stages} & {MEMORISATION_GATE}
    stale = _stale_stages(root, {a.stage for a in found.values()} | gates)
    if stale:
        name, status = next(iter(stale.items()))
        raise ExportError(f"stage {name} is not up to date with dvc.lock ({status}): run `dvc repro` first")

    ledger = [mine[e] for e in entries]
    by_name = {s.name: s for s in stages}
    lock_params = {}
    for name in sorted(privacy.get("stages", {})):
        values = {}
        for d in (d for d in by_name[name].deps if isinstance(d, ParamsDependency)):
            values.update((d.hash_info.value if d.hash_info else None) or {})
        lock_params[name] = drop_params(values, hidden)
    import pyarrow.parquet as pq

    rows = pq.read_metadata(root / RELEASE).num_rows
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        for src, dst in sources.items():
            target = staging / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            if src == COMPOSED:  # the release's dataset only, not a copy of the file
                target.write_text(json.dumps(privacy, indent=2, sort_keys=True) + "\n")
                continue
            (shutil.copytree if (root / src).is_dir() else shutil.copy2)(root / src, target)
        # the release's (and the included files') ancestors only: no other dataset's stage or artifact
        report = lineage.report(root, *upstream(stages, arts, [RELEASE, *extras]), publish=True,
                                params_filter=lambda values: drop_params(values, hidden))
        if not private:
            report = (f"> **{NOT_PRIVATE}.** This run's composed epsilon is {privacy.get('epsilon')!s} (exported "
                      "with `--non-private`): the class `dp` below names a pipeline class only (a mechanism stage's "
                      "output or its post-processing) and carries no privacy guarantee.\n\n" + report)
        (staging / "lineage.md").write_text(report)
        card = dataset_card(privacy, ledger, rows, lock_params) if private else non_private_card(privacy, rows,
                                                                                                   lock_params)
        (staging / "DATASET_CARD.md").write_text(card)
        manifest = {"differentially_private": private, "files": {}}
        for f in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = f.relative_to(staging).as_posix()
            src = next((s for s, d in sources.items() if rel == d or rel.startswith(d + "/")), None)
            cls = found[src].privacy if src else "dp"
            manifest["files"][rel] = {"sha256": file_digest(f), "source": src,
                                      "privacy": cls if private or cls == "public" else f"none ({NOT_PRIVATE})",
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
    parser.add_argument("--non-private", action="store_true",
                        help="export a release that is NOT differentially private (privacy.epsilon: .inf), "
                             "labelled as such; without it such a release is refused")


def run(args: argparse.Namespace) -> int:
    """`dpinstruct export`: 0 with the bundle written, 2 when refused (nothing written)."""
    try:
        manifest = export(args.root, args.out, include=args.include, force=args.force,
                          non_private=args.non_private)
    except ExportError as e:
        print(f"export refused: {e}", file=sys.stderr)
        return 2
    label = "" if manifest["differentially_private"] else f" (labelled {NOT_PRIVATE})"
    print(f"release bundle written to {args.out}{label}: {len(manifest['files'])} files (see MANIFEST.json)")
    return 0
