"""Epsilon sweep: one DVC experiment per ``privacy.epsilon``, run from the queue, tabulated and plotted.

A command, not a stage::

    dpinstruct sweep --epsilons 1 3 6 inf    # queue, run, then table + plot data
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

from dpinstruct.io.params import as_float

PREFIX = "eps-"
PLOT = "plots/privacy_utility.csv"
# The epsilons a sweep can vary: the release's (privacy.epsilon) or the RL task's (rl.privacy.epsilon).
PREFIXES = {"privacy.epsilon": PREFIX, "rl.privacy.epsilon": "rl-eps-"}
RL_PLOT = "plots/rl_reward_epsilon.csv"
SHOW = ("^(Experiment|privacy\\.epsilon|metrics/privacy\\.json:epsilon|epsilon_prv|released|"
        "mauve\\.(train|public|pool|release)\\.mauve|nll\\.(bare|train|public|pool|release)\\.mean|"
        "win_rate\\.(pool|release)\\.win_rate)$")


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


def queue(epsilons: list[str], param: str = "privacy.epsilon") -> list[str]:
    names = []
    for eps in epsilons:
        value = float(eps)  # refuse a typo before anything is queued
        if value <= 0:
            raise ValueError(f"epsilon must be > 0 or inf, got {eps}")
        names.append(name_for(eps, PREFIXES[param]))
    for eps, name in zip(epsilons, names):
        dvc("exp", "run", "--queue", "-n", name, "-S", f"{param}={param_value(eps)}")
    return names


def _revisions(entries):
    for entry in entries or []:
        if entry.get("data") is not None or entry.get("error") is not None:
            yield entry
        for exp in entry.get("experiments") or []:
            yield from _revisions(exp.get("revs"))


def _metric(data: dict, file: str, *keys):
    value = ((data.get("metrics") or {}).get(file) or {}).get("data") or {}
    for k in keys:
        value = value.get(k) if isinstance(value, dict) else None
    return value


def collect(shown: list[dict], param: str = "privacy.epsilon") -> list[dict]:
    """One row per experiment of the sweep over ``param`` (named eps-* or rl-eps-*), from `dvc exp show --json`."""
    rows = []
    prefix = PREFIXES[param]
    for rev in _revisions(shown):
        name = rev.get("name") or ""
        if not name.startswith(prefix) or rev.get("rev") == "workspace":
            continue
        failed = rev.get("error") is not None or rev.get("data") is None
        data = {} if failed else rev["data"]  # a failed run's data is its baseline's: never report it
        params = (((rev.get("data") or {}).get("params") or {}).get("params.yaml") or {}).get("data") or {}
        target = params
        for key in param.split("."):
            target = target.get(key) if isinstance(target, dict) else None
        row = {"experiment": name, "target_epsilon": target, "failed": failed,
               "epsilon": _metric(data, "metrics/privacy.json", "epsilon"),
               "epsilon_prv": _metric(data, "metrics/privacy.json", "epsilon_prv"),
               "noise_multiplier": _metric(data, "metrics/privacy.json", "stages", "train_generator", "noise_multiplier"),
               "pool": _metric(data, "metrics/generate.json", "kept"),
               "sampled": _metric(data, "metrics/generate.json", "sampled"),
               "released": _metric(data, "metrics/resample.json", "released")}
        for s in ("release", "pool", "train", "public"):
            row[f"mauve_{s}"] = _metric(data, "metrics/eval.json", "mauve", s, "mauve")
        row["mauve_release_std"] = _metric(data, "metrics/eval.json", "mauve", "release", "mauve_std")
        for s in ("release", "pool", "train", "public", "bare"):
            row[f"nll_{s}"] = _metric(data, "metrics/alignment.json", "nll", s)
        for s in ("release", "pool"):
            row[f"win_{s}"] = _metric(data, "metrics/alignment.json", "win_rate", s)
        row["rl_epsilon"] = _metric(data, "metrics/privacy.json", "datasets", "imdb", "epsilon")
        row["rl_epsilon_prv"] = _metric(data, "metrics/privacy.json", "datasets", "imdb", "epsilon_prv")
        rl = _metric(data, "metrics/rl.json") or {}
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
    head = ("| experiment | target epsilon | composed epsilon (PRV) | noise multiplier | pool kept / sampled "
            "| released | MAUVE pool | MAUVE release (std) | MAUVE real train | held-out NLL: release | pool "
            "| real train | win rate vs bare: release |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['experiment']}{' (failed)' if r['failed'] else ''} | {_num(r['target_epsilon'], 2)} "
        f"| {_num(r['epsilon'])} ({_num(r['epsilon_prv'])}) | {_num(r['noise_multiplier'])} "
        f"| {_num(r['pool'], 0)} / {_num(r['sampled'], 0)} | {_num(r['released'], 0)} | {_num(r['mauve_pool'])} "
        f"| {_num(r['mauve_release'])} ({_num(r['mauve_release_std'])}) | {_num(r['mauve_train'])} "
        f"| {_interval(r.get('nll_release'))} | {_interval(r.get('nll_pool'))} | {_interval(r.get('nll_train'))} "
        f"| {_interval(r.get('win_release'), 'win_rate')} |\n" for r in rows)


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
    """Finite-epsilon points; the non-private release and real train are constant reference columns."""
    def finite(r):
        return isinstance(r["epsilon"], (int, float)) and math.isfinite(r["epsilon"]) and not r["failed"]

    nonprivate = [r["mauve_release"] for r in rows if not r["failed"] and r["epsilon"] in ("inf", math.inf)]
    points = [r for r in rows if finite(r) and r["mauve_release"] is not None]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["experiment", "epsilon", "mauve_release", "mauve_pool", "mauve_release_nonprivate", "mauve_train"])
        for r in sorted(points, key=lambda r: r["epsilon"]):
            w.writerow([r["experiment"], round(r["epsilon"], 4), round(r["mauve_release"], 4), round(r["mauve_pool"], 4),
                        round(nonprivate[0], 4) if nonprivate else "", round(r["mauve_train"], 4)])
    return len(points)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--param", choices=sorted(PREFIXES), default="privacy.epsilon",
                        help="the epsilon to vary: the release's (default) or the RL task's")
    parser.add_argument("--epsilons", nargs="+", default=["1", "3", "6", "inf"], help="values of --param")
    parser.add_argument("--jobs", type=int, default=1, help="experiments at a time (1 on a 2-core machine)")
    parser.add_argument("--collect-only", action="store_true", help="do not queue or run; tabulate what exists")
    parser.add_argument("--rev", default="HEAD", help="baseline commit whose experiments to tabulate (default HEAD)")


def run(args: argparse.Namespace) -> int:
    """`dpinstruct sweep`: 0 when every experiment ran, 1 when one failed or none exists."""
    if not args.collect_only:
        names = queue(args.epsilons, args.param)
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
    print(f"{write_plot(rows)} points written to {PLOT}; draw with: dvc plots show {PLOT}")
    print(f"dvc exp show --drop '.*' --keep '{SHOW}'")
    return 1 if any(r["failed"] for r in rows) else 0
