"""When a DP training step runs its matmuls in bf16 (``bf16: auto | true | false`` in params).

Measured on 2 CPU cores (tests/benchmarks/bench_train_generator.py): bf16 autocast made a DP step
of the generator 21% faster on an AMD EPYC with avx512_bf16, but an Intel Xeon with avx512_bf16
was 55% slower with it (the old loss, logits over every position). A CPU flag does not say which
way it goes, so ``auto`` turns bf16 on only on a CUDA GPU that supports it, where it always pays;
``true`` forces it (then clipping still runs in fp32: dp_adam.DPAdam).
"""
from __future__ import annotations

import torch

from dpinstruct.io.errors import ConfigError


def bf16_enabled(setting, key: str = "train_generator.bf16") -> bool:
    if setting == "auto":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if isinstance(setting, bool):
        return setting
    raise ConfigError(key, f"must be auto, true or false, got {setting!r}")
