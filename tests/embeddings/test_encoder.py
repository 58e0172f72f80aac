"""Sentence embeddings with the shipped embedder (all-MiniLM-L6-v2, 384 dimensions): float32 rows
in input order whatever the batching, texts cut at ``max_seq_length`` tokens, bf16 close to fp32,
and the model loaded once per folder and dtype."""
from __future__ import annotations

import numpy as np

from dpinstruct.embeddings import encoder

TEXTS = ["How do I bake bread at home?", "Write a poem about the sea.", "What is the capital of France?",
         "Explain recursion to a child.", "List three prime numbers."]


def encode(texts, model_dir, **kw):
    return encoder.encode(texts, model_dir, **{"batch_size": 8, "max_seq_length": 128, "show_progress": False, **kw})


def test_rows_are_float32_unit_vectors_in_input_order(embedder_dir):
    vectors = encode(TEXTS, embedder_dir)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    # one at a time, reversed, or in batches of two: each text keeps its own row
    np.testing.assert_allclose(encode(TEXTS[::-1], embedder_dir)[::-1], vectors, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([encode([t], embedder_dir) for t in TEXTS]), vectors, atol=1e-5)
    np.testing.assert_allclose(encode(TEXTS, embedder_dir, batch_size=2), vectors, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # the model normalises
    assert encode([], embedder_dir).shape[0] == 0


def test_texts_are_cut_at_max_seq_length_tokens(embedder_dir):
    # the same first words, then different endings: identical once cut before the endings
    texts = ["please tell me about the history of bread in europe", "please tell me about quantum computing"]
    cut = encode(texts, embedder_dir, max_seq_length=6)  # [CLS] + 4 shared word pieces + [SEP]
    np.testing.assert_allclose(cut[0], cut[1], atol=1e-6)
    whole = encode(texts, embedder_dir)
    assert float(whole[0] @ whole[1]) < 0.9  # and the setting is not left behind for the next call


def test_bf16_is_close_to_fp32_and_still_float32(embedder_dir):
    fp32, bf16 = encode(TEXTS, embedder_dir), encode(TEXTS, embedder_dir, bf16=True)
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() >= 0.99


def test_the_model_is_loaded_once_per_folder_and_dtype(embedder_dir):
    encode(TEXTS[:1], embedder_dir)  # loaded (or already cached by another test in this process)
    before = encoder._loaded.cache_info()
    encode(TEXTS[:2], str(embedder_dir))  # a str or a Path: the same folder
    encode(TEXTS[:2], embedder_dir, bf16=0)  # any falsy bf16 is fp32
    after = encoder._loaded.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (2, 0)
    assert encoder._loaded(str(embedder_dir), False) is not encoder._loaded(str(embedder_dir), True)

