"""The split forward (trunk once, top many times) equals the model's own forward, padded rows included."""
from __future__ import annotations

import pytest
import torch

from dpinstruct.models.loading import load_generator
from dpinstruct.models.trunk import TrunkRecorder, decoder, first_adapted_layer, output_head, top_hidden, trunk


@pytest.fixture(scope="module")
def model(tiny_generator_dir):
    torch.manual_seed(0)
    return load_generator(tiny_generator_dir)[0].eval()


@pytest.mark.parametrize("start", [0, 7, 29])
def test_trunk_then_top_equals_the_full_forward(model, start):
    ids = torch.randint(0, 1000, (3, 9))
    with torch.no_grad():
        full = decoder(model)(input_ids=ids).last_hidden_state
        split = top_hidden(model, trunk(model, ids, start, batch_size=2), start)
    assert torch.allclose(split, full, atol=1e-5)
    logits = model(input_ids=ids).logits
    assert torch.allclose(output_head(model)(split), logits, atol=1e-4)


def test_padded_rows_pass_their_mask_and_positions(model):
    ids = torch.randint(0, 1000, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 left-padded by 3
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    extra = {"attention_mask": mask, "position_ids": positions}
    with torch.no_grad():
        full = decoder(model)(input_ids=ids, **extra).last_hidden_state
        split = top_hidden(model, trunk(model, ids, 12, **extra), 12, **extra)
    assert torch.allclose(split[mask.bool()], full[mask.bool()], atol=1e-5)


def test_the_recorder_joins_an_incremental_decode_and_the_split_point_is_the_first_trainable_layer(model):
    ids = torch.randint(0, 1000, (2, 6))
    with torch.no_grad(), TrunkRecorder(model, 5) as rec:
        out = model(input_ids=ids[:, :4], use_cache=True)
        model(input_ids=ids[:, 4:], past_key_values=out.past_key_values, use_cache=True)
    assert torch.allclose(rec.sequence(2), trunk(model, ids, 5), atol=1e-5)
    for p in model.parameters():
        p.requires_grad_(False)
    assert first_adapted_layer(model) == len(decoder(model).layers)
    decoder(model).layers[28].mlp.down_proj.weight.requires_grad_(True)
    assert first_adapted_layer(model) == 28
