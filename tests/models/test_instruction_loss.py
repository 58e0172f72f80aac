"""The generator's training loss (instruction_loss) equals the plain one it replaced, values and
per-example gradients, with and without an upper-layers-only adapter; bf16 stays within tolerance."""
from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule

from dpinstruct.io.settings.models import Lora
from dpinstruct.models.instruction_loss import instruction_loss, row_nll
from dpinstruct.models.lora import lora_model
from dpinstruct.models.trunk import first_adapted_layer
from dpinstruct.training.dp_adam import build_examples, collate, per_example_loss

TEXTS = ["Write a haiku about the sea.", "What is the capital of France and why?", "hi",
         "Explain how a transformer model processes a long sentence, step by step, for a beginner."]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def batch_for(tokenizer):
    examples, prompt_len, _ = build_examples(tokenizer, TEXTS, "<|im_start|>user\n", 64)
    return collate(examples, prompt_len, tokenizer.pad_token_id)


def per_example_grads(model, loss_fn, batch):
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    loss_fn(wrapped, batch).sum().backward()
    grads = torch.cat([p.grad_sample.flatten(1) for p in wrapped.parameters() if p.requires_grad], dim=1)
    wrapped._close()
    for p in model.parameters():
        p.grad = None
    return grads


@pytest.mark.parametrize("layers", [None, [26, 27, 28, 29]])
def test_instruction_loss_equals_the_plain_loss_values_and_per_example_gradients(tiny_generator_dir, layers):
    torch.manual_seed(0)
    model, tokenizer = lora_model(tiny_generator_dir, Lora(**LORA | ({"layers": layers} if layers else {})))
    for name, p in model.named_parameters():  # a trained-looking adapter: lora_B is zero at init
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    batch = batch_for(tokenizer)
    start = first_adapted_layer(model)
    assert start == (26 if layers else 0)
    fused = instruction_loss(start)(model, batch)
    plain = per_example_loss(model, batch)
    assert fused.shape == (len(TEXTS),)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    g_fused = per_example_grads(model, instruction_loss(start), batch)
    g_plain = per_example_grads(model, per_example_loss, batch)
    relative = (g_fused - g_plain).norm(dim=1) / g_plain.norm(dim=1)
    assert relative.max() < 1e-4  # float rounding only (the plain loss sums in another order)
    # the sum over target tokens and their count (val_nll reads them), padding and prompt excluded
    summed, counts = row_nll(model, batch, start)
    assert counts.tolist() == ((batch["labels"][:, 1:] != -100).sum(1)).tolist()
    torch.testing.assert_close(summed / counts, plain, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_stays_within_tolerance_of_fp32(generator_dir):
    """Stated tolerance of the bf16 path (train_generator.bf16): losses within 1% (bf16 keeps 8
    mantissa bits, a relative step of 0.4%; a CI CPU measured 0.55% on a 12.5-nat row), each
    record's gradient at cosine >= 0.95 to fp32's (measured >= 0.979) with its norm within 10% (measured 6.8%; the
    clip factor's input). Clipping then runs in fp32 (dp_adam); the DP noise per coordinate is far larger."""
    torch.manual_seed(0)
    model, tokenizer = lora_model(generator_dir, Lora(**LORA | {"layers": [26, 27, 28, 29]}))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    batch, loss_fn = batch_for(tokenizer), instruction_loss(26)
    fp32 = per_example_grads(model, loss_fn, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_loss = loss_fn(model, batch)
        low = per_example_grads(model, loss_fn, batch).float()
    torch.testing.assert_close(low_loss.float(), loss_fn(model, batch), rtol=0.01, atol=0)
    assert torch.nn.functional.cosine_similarity(low, fp32, dim=1).min() >= 0.95
    torch.testing.assert_close(low.norm(dim=1), fp32.norm(dim=1), rtol=0.10, atol=0)
