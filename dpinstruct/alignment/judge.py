"""Pairwise judges: which of two responses answers an instruction better (``JUDGES``: local | openai).

A judgement is a margin for the response shown first ("A"): positive when A is preferred,
negative for B, 0 for no preference. The caller judges every pair twice with the positions swapped
and adds the two margins seen from the same response (``scoring.outcome``), so a judge's constant
preference for a position cancels out.

* ``local``: a causal LM with its chat template reads the prompt below; the margin is the
  difference of the next-token logits of "A" and "B" (one forward pass, no sampling). A small model
  prefers one letter whatever it reads: its verdicts agree across the two orders almost never, but
  the margins still move with the responses, which is what the summed margins compare. How far such
  a judge can be trusted is measured on every run (position consistency, ``sanity``) and reported.
* ``openai``: the same prompt to any OpenAI-compatible endpoint through ``backends.OpenAIChatBackend``
  (cache, concurrency, retries), greedy, a few tokens; the first A or B in the reply gives +1 or -1.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from dpinstruct.alignment.backends import OpenAIChatBackend, Request
from dpinstruct.alignment.chat import chat_ids

PROMPT = ("Compare two responses to the user's instruction.\n\nInstruction:\n{instruction}\n\n"
          "Response A:\n{a}\n\nResponse B:\n{b}\n\n"
          "Which response follows the instruction better (helpful, correct, on topic)? Answer with one letter: A or B.")


def messages(instruction: str, a: str, b: str) -> list[dict]:
    return [{"role": "user", "content": PROMPT.format(instruction=instruction, a=a, b=b)}]


class LocalJudge:
    remote = False

    def __init__(self, model, tokenizer, *, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.choices = [self._letter_id(c) for c in ("A", "B")]

    def _letter_id(self, letter: str) -> int:
        ids = self.tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"the judge's tokenizer splits {letter!r} into {len(ids)} tokens")
        return ids[0]

    @torch.inference_mode()
    def judge(self, triples: list[tuple[str, str, str]], *, label: str = "judge") -> np.ndarray:
        """[n] margins (logit of "A" - logit of "B") of (instruction, a, b) triples."""
        device = next(self.model.parameters()).device
        prompts = [chat_ids(self.tokenizer, messages(*t), generation_prompt=True) for t in triples]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = np.zeros(len(prompts))
        order = np.argsort([len(p) for p in prompts], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # left-padded: the last position is every row's next token
                ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[r, width - len(prompts[i]):] = 1
            positions = (mask.cumsum(1) - 1).clamp_min(0)
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                position_ids=positions.to(device), logits_to_keep=1).logits[:, -1].float()
            out[rows] = (logits[:, self.choices[0]] - logits[:, self.choices[1]]).cpu().numpy()
        return out


class RemoteJudge:
    remote = True

    def __init__(self, backend: OpenAIChatBackend):
        self.backend = backend

    def judge(self, triples: list[tuple[str, str, str]], *, label: str = "judge") -> np.ndarray:
        requests = [Request(f"pair-{i}", messages(*t)) for i, t in enumerate(triples)]
        replies = self.backend.complete(requests, label=label)
        return np.array([_verdict(r.text) for r in replies], dtype=float)


TIE = re.compile(r"\b(tie|equal|equally|neither|both|same)\b", re.IGNORECASE)


def _verdict(text: str) -> int:
    """+1 for A, -1 for B, 0 for a tie, a refusal or no verdict. A reply that is only a letter
    counts in either case; in a sentence only a capital standalone A or B does (the article "a"
    and the B of "Both" are not verdicts), and a reply that speaks of a tie is one."""
    bare = re.fullmatch(r"\W*([AaBb])\W*", text)
    if bare:
        return 1 if bare.group(1).upper() == "A" else -1
    if TIE.search(text):
        return 0
    found = re.search(r"\b([AB])\b", text)
    return 0 if found is None else (1 if found.group(1) == "A" else -1)


def both_orders(judge, instructions: list[str], x: list[str], y: list[str], *, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Margins of (x as A, y as B) and (y as A, x as B), each as seen from x (positive: x preferred)."""
    first = judge.judge([(i, a, b) for i, a, b in zip(instructions, x, y)], label=f"{label} (x first)")
    second = -judge.judge([(i, b, a) for i, a, b in zip(instructions, x, y)], label=f"{label} (y first)")
    return first, second


JUDGES = {"local": LocalJudge, "openai": RemoteJudge}
