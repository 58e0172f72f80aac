"""bf16_enabled: auto is on only on a CUDA GPU with bf16; anything but auto/true/false is refused."""
from __future__ import annotations

import pytest
import torch

from dpinstruct.io.errors import ConfigError
from dpinstruct.models.precision import bf16_enabled


def test_auto_follows_the_device_and_booleans_are_taken_as_given():
    expected = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert bf16_enabled("auto") is bool(expected)
    assert bf16_enabled(True) is True and bf16_enabled(False) is False


@pytest.mark.parametrize("value", ["yes", 1, None, "true"])
def test_other_values_are_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"params.yaml, rl.dp_sft.bf16: must be auto, true or false"):
        bf16_enabled(value, "rl.dp_sft.bf16")
