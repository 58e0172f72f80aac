"""A Bradley-Terry reward model: a linear head on frozen features (the sentence embedder by default).

The score of a response y to a prompt x is r(x, y) = w . phi(x, y), phi the backbone's
unit-length embedding of "Human: x\\n\\nAssistant: y" (``text_of``). Bradley-Terry says the human
prefers y_c to y_r with probability sigmoid(r(x, y_c) - r(x, y_r)); a bias would cancel in the
difference, so the head has none. Training (DP or not): ``bradley_terry``.

Why the embedder by default (measured, tests/benchmarks/bench_reward_backbone.py; docs/rlhf.md has
the table): under DP at epsilon 8 the embedder's and the generator's frozen features give the same
held-out accuracy, and the embedder costs 17 s per 1,000 texts against 163 s, which decides it on 2
CPU cores (``backbone: generator`` is a param away on a GPU). A LoRA adapter with a scalar head on
the generator would pay a 30-layer forward and backward with per-example gradients per comparison
per step.

The fitted model is JSON (backbone, the head's weights): readable, diffable, and loading it runs no
code, unlike a pickle.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_FILE = "reward_model.json"


def text_of(prompt: str, response: str) -> str:
    """The text the embedder sees: the HH-RLHF dialogue format, one turn each."""
    return f"Human: {prompt}\n\nAssistant: {response}"


@dataclass(frozen=True)
class Backbone:
    """The frozen feature map and how texts are encoded: ``kind`` ``embedder`` (the sentence
    embedder's embedding of ``text_of``) or ``generator`` (the mean of the base generator's final
    hidden states over the exchange in its own chat template); unit length either way."""
    kind: str
    model_dir: str
    max_seq_length: int
    batch_size: int

    @classmethod
    def from_params(cls, params: dict) -> Backbone:
        """The materialised model of ``rlhf.features.backbone`` with ``rlhf.features``' settings."""
        from dpinstruct.io.settings.rlhf import Features
        from dpinstruct.models.loading import EMBEDDER_DIR, GENERATOR_DIR

        cfg = Features.from_params(params)  # backbone: embedder | generator
        folders = {"embedder": EMBEDDER_DIR, "generator": GENERATOR_DIR}
        return cls(cfg.backbone, str(folders[cfg.backbone]), cfg.max_seq_length, cfg.batch_size)

    def features(self, prompts: list[str], responses: list[str], *, show_progress: bool = False) -> np.ndarray:
        """[n, d] float32 unit-length features of the (prompt, response) exchanges."""
        if self.kind == "generator":
            vectors = _generator_features(self.model_dir, prompts, responses, self.max_seq_length, self.batch_size,
                                          show_progress)
        else:
            from dpinstruct.embeddings.encoder import encode

            vectors = encode([text_of(p, r) for p, r in zip(prompts, responses)], self.model_dir,
                             batch_size=self.batch_size, max_seq_length=self.max_seq_length,
                             show_progress=show_progress)
        # |phi_c - phi_r| <= 2, the bound the clip norm is set against, needs unit length
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=1)
def _generator(model_dir: str):
    from dpinstruct.models.loading import load_generator

    return load_generator(model_dir)


def _generator_features(model_dir: str, prompts: list[str], responses: list[str], max_len: int, batch_size: int,
                        show_progress: bool) -> np.ndarray:
    import torch
    from tqdm import tqdm

    from dpinstruct.alignment.chat import chat_ids, exchange

    model, tokenizer = _generator(model_dir)
    # the END of a long exchange is kept: the answer is what the two sides differ in
    ids = [chat_ids(tokenizer, exchange(p, r), generation_prompt=False)[-max_len:] for p, r in zip(prompts, responses)]
    order = np.argsort([len(i) for i in ids], kind="stable")  # similar lengths share a batch: less padding
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(ids), batch_size), desc="generator features", disable=not show_progress):
        rows = order[start:start + batch_size]
        width = max(len(ids[i]) for i in rows)
        batch = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(batch)
        for j, i in enumerate(rows):
            batch[j, :len(ids[i])], mask[j, :len(ids[i])] = torch.tensor(ids[i]), 1
        with torch.inference_mode():
            hidden = model.model(input_ids=batch, attention_mask=mask).last_hidden_state
        out[rows] = ((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).float().numpy()
    return out


def accuracy(weight: np.ndarray, chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Share of pairs whose chosen answer scores higher (a tie counts half)."""
    margin = (chosen - rejected) @ weight
    return float(((margin > 0) + 0.5 * (margin == 0)).mean())


@dataclass
class PreferenceReward:
    backbone: Backbone
    weight: np.ndarray  # [d]

    def scores(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """[n] the reward r(x, y) of each response to its prompt."""
        return self.backbone.features(prompts, responses) @ self.weight

    def save(self, folder: Path | str, **about) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        body = {"kind": "bradley-terry linear head on frozen features", "backbone": self.backbone.kind,
                "max_seq_length": self.backbone.max_seq_length, "weight": [float(w) for w in self.weight], **about}
        (folder / MODEL_FILE).write_text(json.dumps(body, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path | str, batch_size: int = 32) -> PreferenceReward:
        """The model saved in ``folder``, its backbone loaded from the materialised models."""
        from dpinstruct.models.loading import EMBEDDER_DIR, GENERATOR_DIR

        body = json.loads((Path(folder) / MODEL_FILE).read_text())
        model_dir = {"embedder": EMBEDDER_DIR, "generator": GENERATOR_DIR}[body["backbone"]]
        return cls(Backbone(body["backbone"], str(model_dir), int(body["max_seq_length"]), batch_size),
                   np.asarray(body["weight"], dtype=np.float32))

