"""Scores of aligned students: held-out response NLL, paired bootstrap intervals, win rates.

Response NLL: the mean per-token negative log-likelihood of a reference response (the annotator's
answer to a held-out instruction) under a model, by teacher forcing on the chat-formatted pair;
the loss covers the response tokens and the end-of-turn token, as SFT's did. Every model is
scored on the same pairs, so differences are paired, and intervals come from a bootstrap over
instructions (percentile, seeded: evaluation draws are not DP randomness).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dpinstruct.alignment.chat import chat_ids, exchange, user


def pair_ids(tokenizer, instruction: str, response: str) -> tuple[list[int], int]:
    """Token ids of the chat-formatted (instruction, response) pair and where the response starts."""
    prompt = chat_ids(tokenizer, user(instruction), generation_prompt=True)
    full = chat_ids(tokenizer, exchange(instruction, response), generation_prompt=False)
    if full[:len(prompt)] != prompt:
        raise ValueError("the chat template does not extend the prompt with the response; cannot score it")
    return full, len(prompt)


@torch.inference_mode()
def response_nll(model, tokenizer, instructions: list[str], responses: list[str], *, batch_size: int = 8) -> np.ndarray:
    """[n] mean per-token NLL of each response given its instruction (teacher forcing)."""
    device = next(model.parameters()).device
    pairs = [pair_ids(tokenizer, i, r) for i, r in zip(instructions, responses)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = np.empty(len(pairs))
    order = np.argsort([len(ids) for ids, _ in pairs], kind="stable")  # similar lengths pad little
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(pairs[i][0]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        target = torch.zeros((len(rows), width), dtype=torch.bool)  # positions whose token is scored
        for r, i in enumerate(rows):
            full, begin = pairs[i]
            ids[r, :len(full)] = torch.tensor(full)
            mask[r, :len(full)] = 1
            target[r, begin:len(full)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # (B, L, V)
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten().to(device),
                              reduction="none").view(len(rows), width - 1).cpu()
        scored = target[:, 1:]
        out[rows] = ((nll * scored).sum(1) / scored.sum(1).clamp(min=1)).numpy()
    return out


def bootstrap_mean(values: np.ndarray, *, draws: int, seed: int, level: float = 0.95) -> dict:
    """Mean of ``values`` with a percentile bootstrap interval over its rows."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(draws, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"mean": float(values.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(values))}


def outcome(first: float, second: float) -> float:
    """One instruction's result for candidate X against Y from the judge's margins for X in the two
    orders (X shown first, then second; positive: X preferred): 1 when their sum favours X, 0 when it
    favours Y, 0.5 for a tie. A constant preference for one position adds to one margin what it
    takes from the other, so it cancels; with +-1 verdicts, X wins when both orders prefer it or one
    does and the other has none."""
    total = first + second
    return 1.0 if total > 0 else 0.0 if total < 0 else 0.5


def win_rate(outcomes: np.ndarray, *, draws: int, seed: int) -> dict:
    """Wins + half the ties over all instructions, with a bootstrap interval and the counts."""
    outcomes = np.asarray(outcomes, dtype=float)
    summary = bootstrap_mean(outcomes, draws=draws, seed=seed)
    return {"win_rate": summary["mean"], "lo": summary["lo"], "hi": summary["hi"], "n": summary["n"],
            "wins": int((outcomes == 1).sum()), "ties": int((outcomes == 0.5).sum()), "losses": int((outcomes == 0).sum())}
