"""Epsilon sweep: one DVC experiment per ``privacy.epsilon``, run from the queue, tabulated and plotted.

A command, not a stage::

    dpinstruct sweep --epsilons 1 3 6 inf    # queue, run, then table + plot data
    dpinstruct sweep --epsilons 1 6 inf --until summary   # the release and its evaluation only
    dpinstruct sweep --collect-only          # table + plot data of experiments already run
    dpinstruct sweep --param rl.privacy.epsilon --epsilons 1 2 4 8 inf   # the RL task's budget instead

Each value is queued as ``dvc exp run --queue -n eps-<value> -S privacy.epsilon=<value>``, then
``dvc exp run --run-all --jobs <jobs>`` runs the queue in temporary copies of the committed
workspace that share the DVC cache, so stages whose inputs do not change (models, prepare, private
embeddings) are restored, not recomputed. Only the generator's noise follows ``privacy.epsilon``
(it is calibrated so that generator + histogram compose to the target), so every experiment
re-runs train_generator and everything downstream of it. ``inf`` is the non-private baseline.

Output: a Markdown table (also ``dvc exp show`` with the columns in ``SHOW``) and
plots/privacy_utility.csv for ``dvc plots show`` (x: composed epsilon; y: MAUVE of the release
and of the pool against real test data, with the non-private release and real train as reference
lines). Experiments belong to the commit they were queued from: ``dvc exp show`` lists those of HEAD,
``--rev <commit>`` those of another baseline.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dpinstruct.evaluation.intervals import bootstrap_ratio, draws_interval, excludes_zero
from dpinstruct.io.params import as_float

PREFIX = "eps-"
RELEASE = "data/release/instructions.parquet"
VAL_RECORDS = "data/eval/val_nll.parquet"
PLOT = "plots/privacy_utility.csv"
# The epsilons a sweep can vary: the release's (privacy.epsilon) or the RL task's (rl.privacy.epsilon).
PREFIXES = {"privacy.epsilon": PREFIX, "rl.privacy.epsilon": "rl-eps-"}
RL_PLOT = "plots/rl_reward_epsilon.csv"
SHOW = ("^(Experiment|privacy\\.epsilon|epsilon\\.instructions|released|yield\\.dp(_pm)?|nll\\.dp(_pm)?|"
        "mauve\\.(pool|release)(_pm)?)$")


def name_for(epsilon: str, prefix: str = PREFIX) -> str:
    value = float(epsilon)
    return prefix + ("inf" if math.isinf(value) else f"{value:g}")


def param_value(epsilon: str) -> str:
    """YAML for privacy.epsilon, always a float, like the committed 6.0. DVC itself compares params by
    value (6 == 6.0), but `-S privacy.epsilon=6` writes the int 6, and a stage that re-runs then
    records another params hash in its ledger and artifacts (seen: eps-6's ledger) and misses
    run-cache entries made with 6.0."""
    value = float(epsilon)
    return ".inf" if math.isinf(value) else repr(value)


def dvc(*args: str, capture: bool = False) -> str:
    """Run the dvc of this interpreter's environment; stage commands (`python -m stages...`) find
    the same interpreter first on PATH."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], env=env, text=True,
                          stdout=subprocess.PIPE if capture else None)
    if done.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed with exit code {done.returncode}")
    return done.stdout or ""


def queue(epsilons: list[str], param: str = "privacy.epsilon", until: str | None = None) -> list[str]:
    names = []
    for eps in epsilons:
        value = float(eps)  # refuse a typo before anything is queued
        if value <= 0:
            raise ValueError(f"epsilon must be > 0 or inf, got {eps}")
        names.append(name_for(eps, PREFIXES[param]))
    for eps, name in zip(epsilons, names):
        dvc("exp", "run", "--queue", "-n", name, "-S", f"{param}={param_value(eps)}", *([until] if until else []))
    return names


def _revisions(entries):
    for entry in entries or []:
        if entry.get("data") is not None or entry.get("error") is not None:
            yield entry
        for exp in entry.get("experiments") or []:
            yield from _revisions(exp.get("revs"))


def git_file(rev: str, path: str) -> dict | None:
    """A committed report of experiment commit ``rev``. Only metrics/summary.json is a DVC metric
    (in `dvc exp show`); the stages' full reports are git-tracked outputs of every experiment commit."""
    done = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def git_lock(rev: str) -> dict:
    done = subprocess.run(["git", "show", f"{rev}:dvc.lock"], capture_output=True, text=True, check=False)
    return yaml.safe_load(done.stdout) if done.returncode == 0 else {}


def _md5(entries, path: str):
    return next((e.get("md5") for e in entries or [] if e.get("path") == path), None)


def alignment_current(lock: dict) -> bool:
    """Whether the experiment's alignment stages ran on its own release (a `--until summary` sweep
    leaves them as the baseline's: their figures would belong to another release)."""
    stages = (lock or {}).get("stages") or {}
    release = _md5((stages.get("resample") or {}).get("outs"), RELEASE)
    annotated = _md5((stages.get("annotate@release") or {}).get("deps"), RELEASE)
    return release is not None and release == annotated


def _reports(rev: str, read=git_file):
    cache = {}

    def metric(file: str, *keys):
        if file not in cache:
            cache[file] = read(rev, file) or {}
        value = cache[file]
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        return value

    return metric


def collect(shown: list[dict], param: str = "privacy.epsilon", read=git_file, lock=git_lock) -> list[dict]:
    """One row per experiment of the sweep over ``param`` (named eps-* or rl-eps-*), from `dvc exp show --json`
    and each experiment's committed reports (``read(rev, path)``)."""
    rows = []
    prefix = PREFIXES[param]
    for rev in _revisions(shown):
        name = rev.get("name") or ""
        if not name.startswith(prefix) or rev.get("rev") == "workspace":
            continue
        failed = rev.get("error") is not None or rev.get("data") is None
        # a failed run's reports are its baseline's: never report them
        metric = _reports(rev.get("rev"), (lambda _r, _p: None) if failed else read)
        params = (((rev.get("data") or {}).get("params") or {}).get("params.yaml") or {}).get("data") or {}
        target = params
        for key in param.split("."):
            target = target.get(key) if isinstance(target, dict) else None
        row = {"experiment": name, "target_epsilon": target, "failed": failed,
               "epsilon": metric("metrics/privacy.json", "epsilon"),
               "epsilon_prv": metric("metrics/privacy.json", "epsilon_prv"),
               "noise_multiplier": metric("metrics/privacy.json", "stages", "train_generator", "noise_multiplier"),
               "pool": metric("metrics/generate.json", "kept"),
               "sampled": metric("metrics/generate.json", "sampled"),
               "released": metric("metrics/resample.json", "released")}
        for s in ("release", "pool", "train", "public", "base"):
            row[f"mauve_{s}"] = metric("metrics/eval.json", "mauve", s, "mauve")
            row[f"mauve_{s}_ci"] = metric("metrics/eval.json", "mauve", s)
        row["mauve_release_std"] = metric("metrics/eval.json", "mauve", "release", "mauve_std")
        row["release_minus_pool"] = metric("metrics/eval.json", "differences", "release-pool")
        row["yield"] = metric("metrics/eval.json", "yield", "pool")
        row["yield_base"] = metric("metrics/eval.json", "yield", "base")
        row["val_nll"] = metric("metrics/val_nll.json", "dp")
        row["rev"] = None if failed else rev.get("rev")
        for s in ("release", "pool"):
            row[f"per_draw_{s}"] = metric("metrics/eval.json", "mauve", s, "per_draw")
        row["val_nll_base"] = metric("metrics/val_nll.json", "base")
        aligned = not failed and alignment_current(lock(rev.get("rev")))
        for s in ("release", "pool", "train", "public", "bare"):
            row[f"nll_{s}"] = metric("metrics/alignment.json", "nll", s) if aligned else None
        for s in ("release", "pool"):
            row[f"win_{s}"] = metric("metrics/alignment.json", "win_rate", s) if aligned else None
        row["rl_epsilon"] = metric("metrics/privacy.json", "datasets", "imdb", "epsilon")
        row["rl_epsilon_prv"] = metric("metrics/privacy.json", "datasets", "imdb", "epsilon_prv")
        rl = metric("metrics/rl.json") or {}
        for kind in ("sft", "ppo"):  # dp_* in a private run, plain in a non-private one
            key = next((k for k in (f"dp_{kind}", kind) if k in (rl.get("mean_reward") or {})), None)
            row[f"reward_{kind}"] = (rl.get("mean_reward") or {}).get(key)
        row["reward_base"] = (rl.get("mean_reward") or {}).get("base")
        diffs = rl.get("reward_diff") or {}
        row["reward_gain"] = next((v for k, v in diffs.items() if "ppo" in k), None)
        rows.append(row)
    return sorted(rows, key=lambda r: as_float(r["target_epsilon"]) if r["target_epsilon"] is not None else math.inf)


def _num(x, digits=3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else ("-" if x is None else str(x))


def _interval(summary, key="mean") -> str:
    """"0.812 [0.79, 0.83]" from a {mean|win_rate, lo, hi} summary, "-" when absent."""
    if not isinstance(summary, dict) or summary.get(key) is None:
        return "-"
    return f"{summary[key]:.3f} [{summary['lo']:.3f}, {summary['hi']:.3f}]"


def table(rows: list[dict]) -> str:
    """The sweep's Markdown table, with the no-fine-tuning baseline (the same in every experiment) as
    its last row. Intervals at evaluate.confidence: see stages/evaluate.py and stages/val_nll.py."""
    head = ("| experiment | target epsilon | composed epsilon (PRV) | noise multiplier | pool yield | released "
            "| val NLL per token | MAUVE pool | MAUVE release | release - pool | held-out NLL: release "
            "| win rate vs bare: release |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['experiment']}{' (failed)' if r['failed'] else ''} | {_num(r['target_epsilon'], 2)} "
        f"| {_num(r['epsilon'])} ({_num(r['epsilon_prv'])}) | {_num(r['noise_multiplier'])} "
        f"| {_interval(r.get('yield'))} ({_num(r['pool'], 0)} / {_num(r['sampled'], 0)}) | {_num(r['released'], 0)} "
        f"| {_interval(r.get('val_nll'))} | {_interval(r.get('mauve_pool_ci'), 'mauve')} "
        f"| {_interval(r.get('mauve_release_ci'), 'mauve')} | {_interval(r.get('release_minus_pool'))} "
        f"| {_interval(r.get('nll_release'))} | {_interval(r.get('win_release'), 'win_rate')} |\n" for r in rows)
    base = next((r for r in rows if not r["failed"] and r.get("yield_base")), None)
    if base:
        body += (f"| base (no fine-tuning) | - | - | - | {_interval(base['yield_base'])} | - "
                 f"| {_interval(base.get('val_nll_base'))} | {_interval(base.get('mauve_base_ci'), 'mauve')} "
                 f"| - | - | - | - |\n")
    return head + body


def cached_records(rev: str, lock=git_lock) -> pd.DataFrame | None:
    """The per-record val NLL (data/eval/val_nll.parquet, a DVC output) of experiment ``rev``, from the
    DVC cache by the md5 its dvc.lock records; None when it is not in the local cache."""
    stages = (lock(rev).get("stages") or {}).values()
    md5 = next((m for m in (_md5(st.get("outs"), VAL_RECORDS) for st in stages) if m), None)
    if md5 is None:
        return None
    path = Path(dvc("cache", "dir", capture=True).strip()) / "files" / "md5" / md5[:2] / md5[2:]
    return pd.read_parquet(path) if path.is_file() else None


def comparisons(rows: list[dict], records=cached_records, confidence: float = 0.95) -> list[dict]:
    """Paired intervals between experiments adjacent in epsilon: the val NLL difference on the same
    val records (bootstrap over records) and the MAUVE difference on the same test draws (t over
    draws). ``a - b`` with a the smaller epsilon: positive NLL / negative MAUVE = a is worse."""
    done = [r for r in rows if not r["failed"] and r.get("rev")]
    found = {r["experiment"]: records(r["rev"]) for r in done}
    out = []
    for a, b in zip(done, done[1:]):
        row = {"a": a["experiment"], "b": b["experiment"], "val_nll": None, "mauve_release": None, "mauve_pool": None}
        ra, rb = found[a["experiment"]], found[b["experiment"]]
        if ra is not None and rb is not None and len(ra) == len(rb) and (ra.tokens.values == rb.tokens.values).all():
            row["val_nll"] = bootstrap_ratio(ra.dp_nll.values, ra.tokens.values, minus=rb.dp_nll.values,
                                             resamples=1000, seed=0, confidence=confidence)
        for s in ("release", "pool"):
            da, db = a.get(f"per_draw_{s}"), b.get(f"per_draw_{s}")
            if da and db and len(da) == len(db):
                row[f"mauve_{s}"] = draws_interval(np.subtract(da, db), confidence)
        out.append(row)
    return out


def comparison_table(pairs: list[dict]) -> str:
    def cell(interval):
        if interval is None:
            return "-"
        return f"{_interval(interval)}{' *' if excludes_zero(interval) else ''}"

    head = ("| a - b | val NLL per token | MAUVE release | MAUVE pool |\n|---|---|---|---|\n")
    return head + "".join(f"| {p['a']} - {p['b']} | {cell(p['val_nll'])} | {cell(p['mauve_release'])} "
                          f"| {cell(p['mauve_pool'])} |\n" for p in pairs)


def rl_table(rows: list[dict]) -> str:
    head = ("| experiment | rl.privacy.epsilon | imdb epsilon (PRV) | mean reward: base | SFT | PPO | PPO - SFT |\n"
            "|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['experiment']}{' (failed)' if r['failed'] else ''} | {_num(r['target_epsilon'], 2)} "
        f"| {_num(r['rl_epsilon'])} ({_num(r['rl_epsilon_prv'])}) | {_interval(r['reward_base'])} "
        f"| {_interval(r['reward_sft'])} | {_interval(r['reward_ppo'])} | {_interval(r['reward_gain'])} |\n"
        for r in rows)


def write_rl_plot(rows: list[dict], path: str = RL_PLOT) -> int:
    """Reward of the SFT and PPO policies against the imdb epsilon (finite runs); non-private as reference."""
    nonprivate = next((r for r in rows if not r["failed"] and r["rl_epsilon"] in ("inf", math.inf)), None)
    points = [r for r in rows if not r["failed"] and isinstance(r["rl_epsilon"], (int, float))
              and math.isfinite(r["rl_epsilon"]) and r["reward_ppo"]]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["experiment", "epsilon", "reward_sft", "reward_ppo", "reward_ppo_nonprivate", "reward_base"])
        for r in sorted(points, key=lambda r: r["rl_epsilon"]):
            ref = nonprivate["reward_ppo"]["mean"] if nonprivate and nonprivate["reward_ppo"] else ""
            w.writerow([r["experiment"], round(r["rl_epsilon"], 4), round(r["reward_sft"]["mean"], 4),
                        round(r["reward_ppo"]["mean"], 4), round(ref, 4) if ref != "" else "",
                        round(r["reward_base"]["mean"], 4)])
    return len(points)


def write_plot(rows: list[dict], path: str = PLOT) -> int:
    """Finite-epsilon points with their intervals; the non-private release, real train and the base
    generator are constant reference columns."""
    def finite(r):
        return isinstance(r["epsilon"], (int, float)) and math.isfinite(r["epsilon"]) and not r["failed"]

    def value(summary, key="mean"):
        return round(summary[key], 4) if isinstance(summary, dict) and summary.get(key) is not None else ""

    nonprivate = [r["mauve_release"] for r in rows if not r["failed"] and r["epsilon"] in ("inf", math.inf)]
    points = [r for r in rows if finite(r) and r["mauve_release"] is not None]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["experiment", "epsilon", "mauve_release", "mauve_release_lo", "mauve_release_hi", "mauve_pool",
                    "mauve_release_nonprivate", "mauve_train", "mauve_base", "val_nll", "val_nll_lo", "val_nll_hi",
                    "pool_yield", "pool_yield_lo", "pool_yield_hi"])
        for r in sorted(points, key=lambda r: r["epsilon"]):
            ci, nll, y = r.get("mauve_release_ci"), r.get("val_nll"), r.get("yield")
            w.writerow([r["experiment"], round(r["epsilon"], 4), round(r["mauve_release"], 4), value(ci, "lo"),
                        value(ci, "hi"), round(r["mauve_pool"], 4), round(nonprivate[0], 4) if nonprivate else "",
                        round(r["mauve_train"], 4), value(r.get("mauve_base_ci"), "mauve"), value(nll),
                        value(nll, "lo"), value(nll, "hi"), value(y), value(y, "lo"), value(y, "hi")])
    return len(points)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--param", choices=sorted(PREFIXES), default="privacy.epsilon",
                        help="the epsilon to vary: the release's (default) or the RL task's")
    parser.add_argument("--epsilons", nargs="+", default=["1", "3", "6", "inf"], help="values of --param")
    parser.add_argument("--jobs", type=int, default=1, help="experiments at a time (1 on a 2-core machine)")
    parser.add_argument("--collect-only", action="store_true", help="do not queue or run; tabulate what exists")
    parser.add_argument("--rev", default="HEAD", help="baseline commit whose experiments to tabulate (default HEAD)")
    parser.add_argument("--until", default=None, metavar="STAGE",
                        help="run each experiment up to STAGE only (e.g. summary: the release and its evaluation, "
                             "without the alignment and RL stages; their columns then read '-')")


def run(args: argparse.Namespace) -> int:
    """`dpinstruct sweep`: 0 when every experiment ran, 1 when one failed or none exists."""
    if not args.collect_only:
        names = queue(args.epsilons, args.param, args.until)
        print(f"queued {', '.join(names)}; running them ({args.jobs} at a time)", flush=True)
        try:
            dvc("exp", "run", "--run-all", "--jobs", str(args.jobs))
        except RuntimeError as e:  # a failed experiment is reported in the table, the others still count
            print(f"warning: {e}", file=sys.stderr)
    rows = collect(json.loads(dvc("exp", "show", "--json", "--rev", args.rev, capture=True)), args.param)
    if not rows:
        print(f"no experiments named {PREFIXES[args.param]}* on {args.rev}; experiments belong to the commit they "
              f"started from (see `dvc exp show -A`)", file=sys.stderr)
        return 1
    if args.param == "rl.privacy.epsilon":
        print(rl_table(rows))
        print(f"{write_rl_plot(rows)} points written to {RL_PLOT}; draw with: dvc plots show {RL_PLOT}")
        return 1 if any(r["failed"] for r in rows) else 0
    print(table(rows))
    print("Paired differences between adjacent epsilons (* = the interval excludes 0):\n")
    print(comparison_table(comparisons(rows)))
    print(f"{write_plot(rows)} points written to {PLOT}; draw with: dvc plots show {PLOT}")
    print(f"dvc exp show --drop '.*' --keep '{SHOW}'")
    return 1 if any(r["failed"] for r in rows) else 0
