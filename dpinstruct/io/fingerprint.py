"""The machine a stage ran on, as far as it can change floating-point results.

``dvc repro`` reproduces a run bit for bit on the same CPU model; across CPUs, torch and MKL pick
other kernels (AVX2, AVX-512, AMX, and MKL's own dispatch), whose sums round differently, and
every DP step amplifies the difference. The fingerprint names what decides the kernels (CPU model
and its SIMD flags, torch's CPU capability, the torch/MKL/oneDNN versions, the thread count and
the environment overrides) and the versions of the libraries whose code does the arithmetic
(``LIBRARIES``: a transformers release may reorder a model's sums, a dp-accounting release may
calibrate another sigma), so that a mismatched dvc.lock is explained, not a mystery. It goes into
every ledger entry and every DP-SGD stream's binding; ``short`` is a digest of it for tables.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from functools import lru_cache

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
LIBRARIES = ("numpy", "transformers", "peft", "opacus", "dp-accounting", "scikit-learn")
OVERRIDES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _cpu() -> tuple[str, list[str]]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine(), []
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    have = set(flags.group(1).split()) if flags else set()
    return (model.group(1).strip() if model else platform.machine()), [f for f in FLAGS if f in have]


def _library_versions(config: str) -> dict:
    mkl = re.search(r"Math Kernel Library Version (\S+)", config)
    onednn = re.search(r"MKL-DNN (v\S+)", config)
    return {"mkl": mkl.group(1) if mkl else None, "onednn": onednn.group(1) if onednn else None}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


@lru_cache(maxsize=1)
def fingerprint() -> dict:
    import torch

    model, flags = _cpu()
    return {
        "cpu": model, "cpu_flags": flags, "machine": platform.machine(),
        "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **_library_versions(torch.__config__.show()),
        "threads": torch.get_num_threads(), "libraries": _versions(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "env": {k: os.environ[k] for k in OVERRIDES if k in os.environ},
    }


def short(fp: dict) -> str:
    """8 hex digits of the fingerprint: equal digests, same kernels."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:8]
