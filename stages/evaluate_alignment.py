"""Stage `evaluate_alignment`: how well each aligned student answers the held-out real test instructions.

For the bare student and each sft@<set> adapter (dpinstruct/alignment/scoring.py, judge.py):
  * held-out response NLL: the mean per-token NLL of the annotator's finished responses to ``rows``
    private test instructions (teacher forcing), with a bootstrap interval over instructions, and the
    paired differences that matter (each set - bare, train - release, release - pool, pool - public);
  * with a judge (``evaluate_alignment.judge.backend``: local | openai; none by default, since a
    judge must pass its own checks to measure anything): win rate against the bare student, both
    answering the first ``judge.rows`` of those instructions (greedy, on the batched sampler), each
    pair judged in both orders; wins + half the ties, with an interval; and the judge's own
    trustworthiness on the same instructions (position consistency, how often it prefers the
    annotator's real answer to an answer to another instruction), which sets ``judge.trusted``.
Writes metrics/alignment.json and plots/alignment/*.csv. Class private: computed on the private
test split without noise. A remote judge sees private test instructions only with
``evaluate_alignment.judge.allow_remote_private``.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from dpinstruct.alignment import judge as J
from dpinstruct.alignment.backends import BACKENDS
from dpinstruct.alignment.chat import chat_ids, user
from dpinstruct.alignment.scoring import bootstrap_mean, outcome, response_nll, win_rate
from dpinstruct.io import params as P
from dpinstruct.io.errors import ConfigError, InputError, PrivacyConfigError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.alignment import EvaluateAlignment, Judge
from dpinstruct.models import sampler
from dpinstruct.models.loading import GENERATOR_DIR, load_generator
from dpinstruct.models.lora import merged_model

log = logging.getLogger("stages.evaluate_alignment")
STAGE = "evaluate_alignment"
TEST = "data/annotated/test.parquet"
SETS = ("train", "public", "pool", "release")
ADAPTERS = {name: f"data/adapters/sft/{name}" for name in SETS}
METRICS = "metrics/alignment.json"
NLL_PLOT, WIN_PLOT = "plots/alignment/nll.csv", "plots/alignment/win_rate.csv"
MIN_CONSISTENCY = 0.7  # share of pairs whose winner survives swapping the positions
NO_JUDGE = ("no win rates: evaluate_alignment.judge.backend is none (the default). Win rates need a judge that "
            "passes its own checks (position consistency >= 0.7, the real answer preferred to an answer to another "
            "instruction), in practice an endpoint (backend openai); the local 135M generator as judge scores position "
            "consistency 0")
PAIRS = (("train", "release"), ("release", "pool"), ("pool", "public"))  # the expected ordering, step by step


def answers(model, tokenizer, instructions: list[str], cfg: EvaluateAlignment) -> list[str]:
    prompts = [chat_ids(tokenizer, user(i), generation_prompt=True) for i in instructions]
    eos, out = tokenizer.eos_token_id, []
    for start in range(0, len(prompts), cfg.batch_size):
        tokens = sampler.sample(model, prompts[start:start + cfg.batch_size], eos_id=eos,
                          pad_id=tokenizer.pad_token_id or eos, max_new_tokens=cfg.max_new_tokens,
                          top_p=1.0, temperature=0.0, generator=torch.Generator())
        out += [tokenizer.decode([t for t in row if t != eos], skip_special_tokens=True).strip() for row in tokens]
    return out


def make_judge(cfg: Judge):
    kind = cfg.backend
    if kind == "none":
        return None
    if kind not in J.JUDGES:
        raise ConfigError("evaluate_alignment.judge.backend", f"unknown judge {kind!r}; one of none, "
                                                              f"{', '.join(sorted(J.JUDGES))}")
    if J.JUDGES[kind].remote and not cfg.allow_remote_private:
        raise PrivacyConfigError("evaluate_alignment: the judge would send private test instructions to the remote "
                                 f"backend {kind!r}; set evaluate_alignment.judge.allow_remote_private: true only if "
                                 "that endpoint may see them")
    if kind == "local":
        path = GENERATOR_DIR if cfg.model == "generator" else cfg.model
        return J.LocalJudge(*load_generator(path))
    remote = cfg.openai
    backend = BACKENDS["openai"](base_url=remote.base_url, model=remote.model, api_key_env=remote.api_key_env,
                                 concurrency=remote.concurrency, timeout=remote.timeout,
                                 max_retries=remote.max_retries, private=True,
                                 decoding={"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 4},
                                 cache_path="data/checkpoints/evaluate_alignment/requests.sqlite")
    return J.RemoteJudge(backend)


def evaluate_alignment(params: dict, out) -> dict:
    cfg = EvaluateAlignment.from_params(params)
    judge = make_judge(cfg.judge)  # refuses a remote judge before any private data is read
    annotated = pd.read_parquet(TEST)
    finished = annotated[annotated.finish_reason == "stop"]  # a cut reference would be scored with an end it lacks
    if len(finished) < cfg.rows:
        raise InputError(TEST, f"{len(finished)} finished test annotations, fewer than evaluate_alignment.rows="
                               f"{cfg.rows}: lower it or raise annotate.test_rows")
    test = finished.sort_values("id").head(cfg.rows)
    instructions, references = test.instruction.tolist(), test.response.tolist()
    judged = 0 if judge is None else min(cfg.judge.rows, len(test))  # the first rows are also judged
    draws, seed = cfg.bootstrap, cfg.seed
    nll, replies = {}, {}
    for name in ("bare", *SETS):
        model, tokenizer = (load_generator(GENERATOR_DIR) if name == "bare" else merged_model(GENERATOR_DIR, ADAPTERS[name]))
        nll[name] = response_nll(model, tokenizer, instructions, references, batch_size=cfg.batch_size)
        replies[name] = answers(model, tokenizer, instructions[:judged], cfg) if judged else []
        log.info("%s: held-out response NLL %.4f", name, nll[name].mean())
    instructions, references = instructions[:judged], references[:judged]
    result = {"rows": len(test), "judged_rows": judged, "nll": {n: bootstrap_mean(v, draws=draws, seed=seed) for n, v in nll.items()},
              "nll_diff": {}, "win_rate": {}, "judge": {"backend": cfg.judge.backend}}
    for a, b in [(s, "bare") for s in SETS] + list(PAIRS):
        result["nll_diff"][f"{a}-{b}"] = bootstrap_mean(nll[a] - nll[b], draws=draws, seed=seed)
    if judge is not None:
        result["judge"].update(judge_pairs(judge, instructions, references, replies, draws=draws, seed=seed))
        result["win_rate"] = result["judge"].pop("win_rate")
    else:
        result["judge"]["note"] = NO_JUDGE
    out.write_json(result, METRICS)
    rows = [{"model": n, **result["nll"][n]} for n in ("bare", *SETS)]
    out.write_csv(pd.DataFrame(rows)[["model", "mean", "lo", "hi"]].round(5), NLL_PLOT)
    out.write_csv(pd.DataFrame([{"set": n, **result["win_rate"][n]} for n in result["win_rate"]],
                               columns=["set", "win_rate", "lo", "hi"])[["set", "win_rate", "lo", "hi"]].round(5), WIN_PLOT)
    return result


def judge_pairs(judge, instructions: list[str], references: list[str], replies: dict, *, draws: int, seed: int) -> dict:
    """Win rates against the bare student, and whether the judge passes its own sanity checks."""
    result, consistent = {"win_rate": {}}, []
    for name in SETS:
        first, second = J.both_orders(judge, instructions, replies[name], replies["bare"], label=f"{name} vs bare")
        result["win_rate"][name] = win_rate(np.array([outcome(f, s) for f, s in zip(first, second)]), draws=draws, seed=seed)
        consistent.append(np.sign(first) == np.sign(second))  # both orders name the same winner
    # The judge's sanity: the annotator's real answer against the answer to the next instruction.
    shifted = references[1:] + references[:1]
    first, second = J.both_orders(judge, instructions, references, shifted, label="judge sanity")
    sanity = win_rate(np.array([outcome(f, s) for f, s in zip(first, second)]), draws=draws, seed=seed)
    consistency = float(np.concatenate(consistent).mean())
    # a judge that names another winner when the order flips, or does not prefer the real answer to
    # an answer to another instruction, measures nothing: its win rates are reported, marked untrusted
    trusted = consistency >= MIN_CONSISTENCY and sanity["lo"] > 0.5
    return {**result, "position_consistency": consistency, "sanity_win_rate": sanity, "trusted": trusted}


def main() -> None:
    with run_stage(STAGE) as out:
        evaluate_alignment(P.load(), out)


if __name__ == "__main__":
    main()
