"""Stage `sentiment_reward`: the reward model of task (i), a sentiment classifier on PUBLIC reviews.

A logistic regression on TF-IDF word features (dpinstruct/rl/reward.py says why not the MiniLM
embedder), fitted on a seeded sample of ``rows`` public reward reviews and measured on ``heldout`` others: accuracy on
whole reviews and on continuation-sized snippets (``snippet_words`` words after the opening), the
inputs it will score. Writes data/models/sentiment_reward (reward.json) and metrics/rl/reward.json;
class public (it never reads private data).
"""
from __future__ import annotations

import logging

import pandas as pd

from dpinstruct.io import params as P
from dpinstruct.io.errors import InputError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.rl import RlData, SentimentReward
from dpinstruct.rl import reward

log = logging.getLogger("stages.sentiment_reward")
STAGE = "sentiment_reward"
REVIEWS = "data/rl/reward_reviews.parquet"
MODEL_DIR = "data/models/sentiment_reward"
METRICS = "metrics/rl/reward.json"


def snippet(text: str, skip: int, words: int) -> str:
    return " ".join(text.split()[skip:skip + words])


def sentiment_reward(params: dict, out) -> dict:
    cfg, prompt_tokens = SentimentReward.from_params(params), RlData.read(params, "prompt_tokens")
    reviews = pd.read_parquet(REVIEWS)
    need = cfg.rows + cfg.heldout
    if len(reviews) < need:
        raise InputError(REVIEWS, f"{len(reviews)} reward reviews, fewer than rows + heldout = {need}")
    picked = reviews.sample(n=need, random_state=cfg.seed).reset_index(drop=True)
    train, heldout = picked.iloc[:cfg.rows], picked.iloc[cfg.rows:]
    log.info("fitting on %d public reviews, measuring on %d others", len(train), len(heldout))
    model = reward.fit(train.text.tolist(), train.label.to_numpy(), c=cfg.c, min_df=cfg.min_df)
    folder = out.path(MODEL_DIR)
    model.save(folder)
    model = reward.SentimentReward.load(folder)  # measure exactly what later stages load
    snippets = [snippet(t, prompt_tokens, cfg.snippet_words) for t in heldout.text]
    metrics = {"rows": len(train), "heldout": len(heldout), "reward": "positive-class logit",
               "features": len(model.vocabulary),
               "accuracy": float(((model.logits(heldout.text.tolist()) > 0) == heldout.label.to_numpy()).mean()),
               "snippet_accuracy": float(((model.logits(snippets) > 0) == heldout.label.to_numpy()).mean())}
    out.write_json(metrics, METRICS)
    log.info("sentiment reward: accuracy %.3f on held-out reviews, %.3f on %d-word snippets", metrics["accuracy"],
             metrics["snippet_accuracy"], cfg.snippet_words)
    return metrics


def main() -> None:
    with run_stage(STAGE) as out:
        sentiment_reward(P.load(), out)


if __name__ == "__main__":
    main()
