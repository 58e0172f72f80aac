"""`dpinstruct audit`: an empirical lower bound on the generator's epsilon from one training run.

m canaries (``audit.canaries``), each eight random words of the generator's vocabulary, are
drawn together with their inclusion flags (probability 1/2 each) from a secret-keyed stream.
The included ones join a copy of the private train split, and the generator is trained exactly as
`train_generator` trains it (dpinstruct/training/dp_generator.py: the same params, plan, sampling
and noise, with streams bound to this copy), once at the run's ``privacy.epsilon`` and once at
``.inf`` (no clipping, no noise) to show what the attack can see without DP. A canary's score is
its loss under the base generator minus its loss under the trained one (how much training taught
it), and ``dpinstruct.privacy.audit`` turns the scores into the one-run lower bound of Steinke et
al. (2023). The claim audited is the generator's own epsilon (the histogram never sees canaries).

Writes metrics/audit.json; exits non-zero, after writing it, when a lower bound exceeds its claim:
then the code does not do what its proof assumes. The canaries are synthetic, so the report and
log quote no private text; the counts it states (canaries, guesses) are of canaries only.
Needs data/prepared/train.parquet (`dvc repro prepare`). Takes about 2 x the train_generator stage.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from dpinstruct.io import params as P
from dpinstruct.io.artifacts import file_digest
from dpinstruct.io.errors import PipelineError
from dpinstruct.io.runner import setup_logging
from dpinstruct.io.settings.generation import TrainGenerator
from dpinstruct.io.settings.privacy import Audit, Randomness, UserLevel
from dpinstruct.models.loading import GENERATOR_DIR, load_tokenizer
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, user_level
from dpinstruct.privacy.audit import audit
from dpinstruct.privacy.ledger import finite
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.privacy.run_key import closure_digest, run_key
from dpinstruct.training import dp_generator
from dpinstruct.training.dp_adam import collate, per_example_loss

log = logging.getLogger(__name__)
TRAIN = dp_generator.TRAIN
OUT = Path("metrics/audit.json")
CANARY_WORDS = 8


class AuditFailure(PipelineError):
    """An empirical lower bound exceeds the claimed epsilon."""


def vocabulary_words(tokenizer) -> list[str]:
    """Whole lowercase words of 4+ letters that are single tokens with a leading space (sorted, public)."""
    return sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith("\u0120") and t[1:].isalpha()
                  and t[1:].islower() and len(t) >= 5)


def draw_canaries(random: DPRandom, words: list[str], m: int) -> tuple[list[str], np.ndarray]:
    """m distinct canaries of CANARY_WORDS random words each, and each one's inclusion (prob. 1/2)."""
    picks = np.minimum((random.uniform(m * CANARY_WORDS) * len(words)).astype(np.int64), len(words) - 1)
    texts = [" ".join(words[i] for i in row).capitalize() for row in picks.reshape(m, CANARY_WORDS)]
    if len(set(texts)) != m:
        raise AuditFailure("canaries collided; draw again with another audit.canaries")
    return texts, random.bernoulli(m, 0.5)


@torch.no_grad()
def canary_losses(model, tokenizer, texts: list[str], prompt: str, batch_size: int = 64) -> np.ndarray:
    """Each canary's mean token loss after the generation prompt (the training loss of a record)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bodies = tokenizer(texts, add_special_tokens=False)["input_ids"]
    examples = [prompt_ids + b + [tokenizer.eos_token_id] for b in bodies]
    model.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], len(prompt_ids), tokenizer.pad_token_id)
        out.append(per_example_loss(model, batch).float().numpy())
    return np.concatenate(out)


def run_once(params: dict, label: str, train: pd.DataFrame, texts: list[str], included: np.ndarray,
             confidence: float, workdir: Path) -> dict:
    """Train on train + included canaries at ``params``' epsilon; score every canary; the bound."""
    data = pd.concat([train[["id", "instruction", "user_id"]],
                      pd.DataFrame({"id": [f"canary:{i}" for i in np.flatnonzero(included)],
                                    "instruction": [texts[i] for i in np.flatnonzero(included)],
                                    "user_id": None})], ignore_index=True)
    units = user_level.units(data.user_id, data.id, UserLevel.read(params, "enabled"))
    sections = dp_generator.sections(params)
    data_digest = P.params_hash(data.id.tolist(), data.instruction.tolist(), data.user_id.tolist())
    # the whole run key, as train_generator's (params, base weights, the split, the DP count, the code)
    # plus this tool's own code and the audited copy of the data: an audit never replays a release's noise
    key = (*run_key(dp_generator.STAGE, sections, dp_generator.INPUTS),
           f"tool:{closure_digest(Path(__file__).resolve())}", f"audit:{label}", f"data:{data_digest}")
    started = time.monotonic()
    # The run's DP count (the divisor and the calibration's prior, exactly as train_generator plans),
    # plus the canaries added to the copy of the split (an audit-internal, private figure).
    noisy_count, count_component, _ = dp_count.read(dp_generator.COUNT)
    fitted = dp_generator.fit(params, data.instruction.tolist(), units=units,
                              noisy_count=noisy_count + int(included.sum()), count_component=count_component,
                              run_key=key,
                              checkpoint_dir=workdir / label / "checkpoints", live_dir=workdir / label / "live",
                              desc=f"audit training ({label})")
    # the time is logged, not reported: it grows with the private N
    log.info("audit training (%s) took %.0f s", label, time.monotonic() - started)
    prompt = TrainGenerator.read(params, "prompt")
    bar = tqdm(total=2, desc=f"scoring {len(texts)} canaries ({label})", unit="model")
    trained = canary_losses(fitted.model, fitted.tokenizer, texts, prompt)
    bar.update()
    with fitted.model.disable_adapter():
        base = canary_losses(fitted.model, fitted.tokenizer, texts, prompt)
    bar.update()
    bar.close()
    p = fitted.plan
    claimed = (math.inf if not p.private else
               acct.round_up(acct.epsilon_pld([acct.dp_sgd_event(p.noise_multiplier, p.sampling_rate, p.steps)],
                                              p.delta)))
    scores = base - trained
    result = audit(scores, included, confidence=confidence, delta=p.delta)
    return {"claimed_epsilon": claimed, "claimed_release_epsilon": p.composed_epsilon, "delta": p.delta,
            "lower_bound": result.lower_bound, "confidence": confidence, "canaries": result.canaries,
            "canaries_included": result.included, "guesses": result.guesses, "correct": result.correct,
            "grid": result.grid, "neighbouring": fitted.mechanism.scope.neighbouring, "noise_multiplier": p.noise_multiplier,
            "sampling_rate": p.sampling_rate, "steps": p.steps,
            "mean_score_in": float(scores[included].mean()), "mean_score_out": float(scores[~included].mean())}


def run_audit(params: dict, *, canaries: int, confidence: float, runs: tuple = ("run", "inf"),
              epochs: float | None = None) -> dict:
    """``runs``: "run" (the run's epsilon) and/or "inf". ``epochs`` overrides train_generator.epochs
    for a power study (the report says so: it is then not the run's own training)."""
    if canaries < 2:
        raise PipelineError(f"audit.canaries must be >= 2, got {canaries}")
    if not 0 < confidence < 1:
        raise PipelineError(f"audit.confidence must be in (0, 1), got {confidence}")
    if not TRAIN.exists():
        raise PipelineError(f"{TRAIN} not found: run `dvc repro prepare` first")
    if not runs or set(runs) - {"run", "inf"}:
        raise PipelineError(f"--runs must name run and/or inf, got {','.join(runs)!r}")
    train = pd.read_parquet(TRAIN, columns=["id", "instruction", "user_id"])
    tokenizer = load_tokenizer(GENERATOR_DIR)
    random = DPRandom.for_purpose("audit/canaries", file_digest(TRAIN), canaries,
                                  privacy=Randomness.from_params(params))
    texts, included = draw_canaries(random, vocabulary_words(tokenizer), canaries)
    settings = {}
    for label in runs:
        settings[label] = copy.deepcopy(params)
        if label == "inf":
            settings[label]["privacy"]["epsilon"] = math.inf
        if epochs is not None:
            settings[label][dp_generator.STAGE]["epochs"] = epochs
    report = {}
    with tempfile.TemporaryDirectory(prefix="dpinstruct-audit-") as tmp:
        for label, run_params in settings.items():
            report[label] = run_once(run_params, label, train, texts, included, confidence, Path(tmp))
            log.info("audit %s: claimed epsilon %s, lower bound %.3f at %.0f%% confidence (%d of %d guesses right)",
                     label, report[label]["claimed_epsilon"], report[label]["lower_bound"], 100 * confidence,
                     report[label]["correct"], report[label]["guesses"])
    out = {**report.get("run", {}), **({"inf": report["inf"]} if "inf" in report else {}),
           **({"epochs_override": epochs} if epochs is not None else {}),
           "method": "one-run audit, Steinke, Nasr, Jagielski (NeurIPS 2023), Theorem 5.2; guess counts from a "
                     "fixed grid, Bonferroni-corrected",
           "score": "canary loss under the base generator minus under the trained one",
           # computed by training on the private split: for the data owner, like metrics/eval.json
           "privacy": "private"}
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--canaries", type=int, help="number of canaries m (default: audit.canaries in params.yaml)")
    parser.add_argument("--confidence", type=float, help="confidence of the lower bound (default: audit.confidence)")
    parser.add_argument("--runs", default="run,inf", help="which trainings: run (the run's epsilon), inf, or both")
    parser.add_argument("--epochs", type=float, help="power study: override train_generator.epochs (the report "
                        "says so; it is then not the run's own training)")
    parser.add_argument("--out", default=str(OUT), help=f"report path (default: {OUT})")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    params = P.load()
    try:
        cfg = Audit.from_params(params)
        report = run_audit(params, canaries=cfg.canaries if args.canaries is None else args.canaries,
                           confidence=cfg.confidence if args.confidence is None else args.confidence,
                           runs=tuple(r for r in args.runs.split(",") if r), epochs=args.epochs)
    except PipelineError as e:
        print(f"audit failed: {e}", file=sys.stderr)
        return 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(finite(report), indent=2, sort_keys=True) + "\n")
    print(f"audit report written to {args.out}")
    broken = [label for label, r in (("run", report), ("inf", report.get("inf"))) if r
              and "lower_bound" in r and r["lower_bound"] > float(r["claimed_epsilon"])]
    for label in broken:
        r = report if label == "run" else report["inf"]
        print(f"AUDIT FAILURE ({label}): lower bound {r['lower_bound']:.4f} exceeds the claimed epsilon "
              f"{r['claimed_epsilon']}: the training code does not do what its privacy proof assumes", file=sys.stderr)
    return 1 if broken else 0

