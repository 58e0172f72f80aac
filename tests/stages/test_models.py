"""The shipped models load offline and work: the GGUF generator after the models stage, and the embedder."""
from __future__ import annotations

import json

import torch

from dpinstruct.models.loading import load_embedder, load_generator


def test_generator_materialised_as_fp32_safetensors(generator_dir):
    names = {p.name for p in generator_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    config = json.loads((generator_dir / "config.json").read_text())
    assert "quantization_config" not in config  # a GGUF marker would block training and saving


def test_generator_samples_a_few_tokens(generator_dir):
    model, tokenizer = load_generator(generator_dir)
    assert next(model.parameters()).dtype == torch.float32
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > inputs.input_ids.shape[1]
    assert "Paris" in new  # the dequantised weights are the real model, not noise
    torch.manual_seed(0)
    a = model.generate(**inputs, max_new_tokens=6, do_sample=True, top_p=0.95, temperature=1.0)
    torch.manual_seed(0)
    b = model.generate(**inputs, max_new_tokens=6, do_sample=True, top_p=0.95, temperature=1.0)
    assert torch.equal(a, b)


def test_embedder_embeds_two_sentences(embedder_dir):
    model = load_embedder(embedder_dir)
    emb = model.encode(["How do I bake bread?", "What is a good recipe for baking bread?", "Explain CUDA streams."],
                       normalize_embeddings=True)
    assert emb.shape == (3, 384)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6 > sim[0, 2]
