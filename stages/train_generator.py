"""Stage `train_generator` (Algorithm 1): DP-LoRA fine-tuning of the base generator.

Budget first: before touching the model, the noise multiplier is calibrated so that the COMPOSED
epsilon of this stage's T Poisson-subsampled Gaussian steps and the one Gaussian histogram of
Algorithm 2 meets privacy.epsilon at privacy.delta; unsafe or impossible settings stop here.
Output: the peft adapter (data/adapters/generator, class dp), the ledger entry
metrics/privacy/train_generator.json and DVCLive curves (loss, epsilon spent). Checkpoints in
data/checkpoints/train_generator let a killed run resume bit-identically. Poisson sampling and the
noise come from secret-keyed streams bound to this run's params and data (dpinstruct/privacy/randomness.py);
``train_generator.seed`` drives only the LoRA initialisation.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from dpinstruct.io import checkpoint
from dpinstruct.io import params as P
from dpinstruct.io.artifacts import file_digest
from dpinstruct.io.runner import run_stage
from dpinstruct.models.loading import GENERATOR_DIR
from dpinstruct.models.lora import lora_model, save_adapter
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_adam, ledger
from dpinstruct.privacy.dp_adam import DPAdam, build_examples, collate, micro_batches, poisson_sample
from dpinstruct.privacy.randomness import DPRandom

log = logging.getLogger("stages.train_generator")
TRAIN = Path("data/prepared/train.parquet")
ADAPTER_DIR = Path("data/adapters/generator")
CHECKPOINT_DIR = Path("data/checkpoints/train_generator")
LIVE_DIR = Path("dvclive/train_generator")
STAGE = "train_generator"


def plan(params: dict, n_records: int) -> acct.GeneratorPlan:
    cfg = params[STAGE]
    return acct.plan_generator(params.get("privacy"), params.get("histogram"), n_records=n_records,
                               sampling_rate=P.as_float(cfg["sampling_rate"]), epochs=P.as_float(cfg["epochs"]),
                               clip_norm=P.as_float(cfg["clip_norm"]),
                               expected_batch_size=P.as_float(cfg["expected_batch_size"]))


def train(params: dict, out) -> dict:
    from dvclive import Live

    cfg = params[STAGE]
    phash = P.params_hash(cfg, params.get("privacy"), params.get("histogram"))
    instructions = pd.read_parquet(TRAIN, columns=["instruction"]).instruction.tolist()
    p = plan(params, len(instructions))  # refuses unsafe configs before any model work
    log.info("plan: q=%.4g T=%d sigma=%.4f C=%s -> composed epsilon %.3f (PLD), %.3f (PRV) at delta %g",
             p.sampling_rate, p.steps, p.noise_multiplier, p.clip_norm, p.composed_epsilon, p.composed_epsilon_prv,
             p.delta)
    # DP randomness: one keyed stream per source, bound to this run's params and private data.
    binding = (phash, file_digest(TRAIN))
    sampler = DPRandom.for_purpose(f"{STAGE}/poisson", *binding, privacy=params.get("privacy"))
    noise = DPRandom.for_purpose(f"{STAGE}/noise", *binding, privacy=params.get("privacy"))
    # A checkpoint may be resumed only by the very same run: same params, plan (noise, rate,
    # steps), data, base weights, training code and key; anything else would mix two runs in one adapter.
    run_key = P.params_hash(phash, p.as_dict(), file_digest(TRAIN), file_digest(GENERATOR_DIR / "model.safetensors"),
                            file_digest(__file__), file_digest(dp_adam.__file__), sampler.resume_tag(),
                            noise.resume_tag())
    torch.manual_seed(cfg["seed"])  # LoRA init only: public, and no DP proof relies on it
    model, tokenizer = lora_model(GENERATOR_DIR, cfg["lora"])
    examples, prompt_len, skipped = build_examples(tokenizer, instructions, cfg["prompt"], cfg["max_seq_len"])
    if skipped:  # a private count: the log and DVCLive (private) only
        log.info("%d train instructions longer than max_seq_len=%d are skipped (never cut: they would lose EOS)",
                 skipped, cfg["max_seq_len"])
    lengths = np.array([len(e) for e in examples])
    dp = DPAdam(model, lr=P.as_float(cfg["lr"]), noise_multiplier=p.noise_multiplier, clip_norm=p.clip_norm,
                expected_batch_size=p.expected_batch_size, noise=noise, autocast_bf16=bool(cfg["bf16"]))
    streams = {"poisson": sampler, "noise": noise}
    state = checkpoint.load(CHECKPOINT_DIR, run_key)
    start = checkpoint.restore(state, model=model, optimizer=dp.optimizer, streams=streams) if state else 0
    spent = acct.RunningEpsilon(p.noise_multiplier, p.sampling_rate, p.delta, steps_done=start)
    live = Live(str(LIVE_DIR), resume=start > 0, save_dvc_exp=False, dvcyaml=None, report=None)
    live.summary["skipped_too_long"] = skipped
    bar = tqdm(range(start, p.steps), initial=start, total=p.steps, desc="DP-Adam steps", unit="step")
    for step in bar:
        idx = poisson_sample(sampler, len(examples), p.sampling_rate)
        micro = [collate([examples[i] for i in b], prompt_len, tokenizer.pad_token_id)
                 for b in micro_batches(idx, lengths, cfg["micro_batch_tokens"])]
        result = dp.step(micro)
        eps = spent.step()
        bar.set_postfix(batch=result.batch_size, loss=f"{result.loss:.3f}", eps=f"{eps:.2f}")
        live.log_metric("loss", result.loss)
        live.log_metric("batch_size", result.batch_size)
        if p.private:
            live.log_metric("epsilon", eps)
        live.next_step()
        if (step + 1) % cfg["checkpoint_every"] == 0 and step + 1 < p.steps:
            checkpoint.save(CHECKPOINT_DIR, step=step + 1, run_key=run_key, model=model, optimizer=dp.optimizer,
                            streams=streams)
    live.end()
    realised = p.sampling_rate * len(examples)
    if not 0.5 <= realised / p.expected_batch_size <= 2:
        log.warning("train_generator.expected_batch_size=%g is far from the realised mean batch q x N: it only "
                    "scales the update, but set it near q x N", p.expected_batch_size)
    save_adapter(model, out.path(ADAPTER_DIR))
    event = acct.dp_sgd_event(p.noise_multiplier, p.sampling_rate, p.steps)
    entry = ledger.make_entry(stage=STAGE, mechanism="poisson_subsampled_gaussian", noise_multiplier=p.noise_multiplier,
                              sampling_rate=p.sampling_rate, steps=p.steps, sensitivity=p.clip_norm, delta=p.delta,
                              event=event, plan=p.as_dict(), secure_mode=not noise.replayable, params_hash=phash)
    out.write_json(entry, ledger.entry_path(STAGE))
    log.info("epsilon of this stage alone: %s (PRV %s); planned release epsilon %.3f", entry["epsilon"],
             entry["epsilon_prv"], p.composed_epsilon)
    return entry


def main() -> None:
    with run_stage(STAGE) as out:
        train(P.load(), out)


if __name__ == "__main__":
    main()
