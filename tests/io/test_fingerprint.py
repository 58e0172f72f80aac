"""The machine fingerprint: what decides the kernels, and a short digest that changes with any of it."""
from __future__ import annotations

import torch

from dpinstruct.io import fingerprint as F


def test_it_names_what_decides_the_kernels():
    fp = F.fingerprint()
    assert {"cpu", "cpu_flags", "torch", "torch_cpu_capability", "mkl", "onednn", "threads", "cuda", "env"} <= set(fp)
    assert fp["torch"] == torch.__version__ and fp["threads"] == torch.get_num_threads()
    assert set(fp["cpu_flags"]) <= set(F.FLAGS)


def test_the_short_digest_is_stable_and_moves_with_any_field():
    fp = F.fingerprint()
    digest = F.short(fp)
    assert len(digest) == 8 and int(digest, 16) >= 0
    assert F.short(dict(reversed(list(fp.items())))) == digest  # key order does not matter
    assert F.short({**fp, "threads": fp["threads"] + 1}) != digest
    assert F.short({**fp, "env": {"MKL_CBWR": "AVX2"}}) != digest
