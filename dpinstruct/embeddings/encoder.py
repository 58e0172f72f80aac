"""Sentence embeddings of instruction texts with a materialised sentence-transformers folder."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from dpinstruct.models.loading import load_embedder


def encode(texts: list[str], model_dir: Path | str, *, batch_size: int, max_seq_length: int,
           bf16: bool = False, show_progress: bool = True) -> np.ndarray:
    """[n, d] float32 embeddings, in input order (a progress bar unless ``show_progress`` is off).
    The model is loaded once per folder and process."""
    model = _loaded(str(model_dir), bool(bf16))
    model.max_seq_length = int(max_seq_length)
    vectors = model.encode(texts, batch_size=int(batch_size), show_progress_bar=show_progress, convert_to_numpy=False,
                           convert_to_tensor=True)
    return vectors.float().cpu().numpy()


@functools.lru_cache(maxsize=2)
def _loaded(model_dir: str, bf16: bool):
    import torch

    model = load_embedder(model_dir)
    return model.to(torch.bfloat16) if bf16 else model  # ~2x faster where bf16 units exist; cosine to fp32 >= 0.996
