"""Privacy claims tested as an attacker would test them: from the published outputs, params.yaml
and the code, with no key. The attacker here also gets the repository (dvc.lock's digests, the
committed metrics): more than the threat model grants (dpinstruct.privacy), so a pass is conservative.

The attack of issue 11: the noisy histogram is recoverable from committed plot data (its shares)
and metrics (its noisy total); if its noise can be recomputed by anyone without the secret key,
subtracting it leaves whole numbers, the exact private count of every cluster. The attacker tries
every seed or key derivable from public material, through numpy, torch and python `random` and
through the project's own stream code (``DPRandom`` on a chosen seed, and ``DPRandom.for_purpose``
with a chosen key: a key-only replay). Positive controls run the real mechanism with a weak key or
a public seed and show that the very same attack recovers the exact counts there, so "it finds
nothing on the committed release" means something.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import yaml

from dpinstruct.io import params as P
from dpinstruct.io.settings.privacy import Randomness
from dpinstruct.privacy import randomness as R
from dpinstruct.privacy.histogram import release
from dpinstruct.privacy.randomness import DPRandom

REPO = Path(__file__).resolve().parents[2]
SEEDS = range(1000)  # every small seed, besides every seed params.yaml states
PURPOSES = ("histogram/noise", "histogram", "noise")  # the stage's (f"{STAGE}/noise") and plain guesses
SHARES_CSV, NOISY_METRICS = REPO / "plots/eval/cluster_shares.csv", REPO / "metrics/histogram.json"
NOISY_PARQUET = "data/histogram/noisy_histogram.parquet"
PUBLISHED_DIRS = ("metrics", "plots", "dvclive", "data/release", "docs")
CODE_DIRS = ("dpinstruct", "stages")
TOP_FILES = ("params.yaml", "dvc.yaml", "dvc.lock", "README.md", "ARCHITECTURE.md", "mkdocs.yml", "pyproject.toml")
HEX = re.compile(rb"[0-9a-f]{16,}")


# --- what the attacker holds ------------------------------------------------------------------

def params_seeds(params) -> set[int]:
    found = set()

    def visit(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if "seed" in k and isinstance(v, int) and not isinstance(v, bool):
                    found.add(v)
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(params)
    return found


@functools.lru_cache(maxsize=None)
def lock() -> dict:
    path = REPO / "dvc.lock"
    return yaml.safe_load(path.read_text()) if path.exists() else {"stages": {}}


@functools.lru_cache(maxsize=None)
def params_sets() -> tuple[dict, ...]:
    """params.yaml as it is now, and the sections each stage of dvc.lock ran with (do not mutate)."""
    sets = [yaml.safe_load((REPO / "params.yaml").read_text())]
    for stage in lock()["stages"].values():
        used = (stage.get("params") or {}).get("params.yaml")
        if used:
            sets.append(used)
    return tuple(sets)


@functools.lru_cache(maxsize=None)
def histogram_params_hashes() -> tuple[str, ...]:
    """The params hash the histogram stage binds its stream to (P.params_hash(histogram, privacy)),
    from the committed run's params (dvc.lock) and from params.yaml."""
    hashes = []
    for params in params_sets():
        if "histogram" in params and "privacy" in params:
            h = P.params_hash(params["histogram"], params["privacy"])
            if h not in hashes:
                hashes.append(h)
    return tuple(hashes)


def published_files() -> list[Path]:
    files = [REPO / f for f in TOP_FILES if (REPO / f).is_file()]
    for d in PUBLISHED_DIRS:
        files += sorted(f for f in (REPO / d).rglob("*") if f.is_file())
    for d in CODE_DIRS:
        files += sorted(f for f in (REPO / d).rglob("*.py") if "__pycache__" not in f.parts)
    return files


@functools.lru_cache(maxsize=None)
def public_material() -> tuple[tuple[bytes, str], ...]:
    """Every byte string an attacker could derive from public material, each with a label: fixed
    weak keys, the DOMAIN constant, the default key file's path, params hashes and seeds, the
    digests (sha256 hex and raw, md5 hex) and small contents of every published output, config
    file and code file, and every md5 dvc.lock states."""
    found: dict[bytes, str] = {}

    def add(data: bytes, label: str):
        found.setdefault(data, label)

    add(b"", "the empty key")
    add(bytes(R.KEY_BYTES), "32 zero bytes")
    add(b"\xff" * R.KEY_BYTES, "32 0xff bytes")
    add(R.DOMAIN, "DOMAIN")
    paths = {R.DEFAULT_KEY_FILE, os.path.expanduser(R.DEFAULT_KEY_FILE)}
    for params in params_sets():
        chosen = (params.get("privacy") or {}).get("key_file")
        if chosen:
            paths |= {str(chosen), os.path.expanduser(str(chosen))}
    for path in sorted(paths):
        add(path.encode(), f"key file path {path}")
        add(Path(path).name.encode(), f"key file name {Path(path).name}")
    for purpose in PURPOSES:
        add(purpose.encode(), f"purpose {purpose}")
    for params in params_sets():
        sections = [v for v in params.values() if isinstance(v, dict)]
        for h in sorted({P.params_hash(*sections), *(P.params_hash(s) for s in sections), *histogram_params_hashes()}):
            add(h.encode(), f"params hash {h}")
            add(bytes.fromhex(h), f"params hash {h} (raw)")
        for seed in params_seeds(params):
            add(str(seed).encode(), f"params seed {seed}")
            for width in (4, 8, R.KEY_BYTES):
                add(seed.to_bytes(width, "big"), f"params seed {seed} ({width} bytes)")
    for f in published_files():
        data, name = f.read_bytes(), str(f.relative_to(REPO))
        if len(data) <= 1 << 20:
            add(data, f"contents of {name}")
        sha, md5 = hashlib.sha256(data), hashlib.md5(data).hexdigest()
        add(sha.hexdigest().encode(), f"sha256 of {name}")
        add(sha.digest(), f"sha256 of {name} (raw)")
        add(md5.encode(), f"md5 of {name}")
    lock_text = (REPO / "dvc.lock").read_text() if (REPO / "dvc.lock").exists() else ""
    for digest in sorted(set(re.findall(r"\b[0-9a-f]{32}\b", lock_text))):
        add(digest.encode(), f"md5 {digest} in dvc.lock")
        add(bytes.fromhex(digest), f"md5 {digest} in dvc.lock (raw)")
    return tuple(found.items())


@functools.lru_cache(maxsize=None)
def public_int_seeds() -> tuple[int, ...]:
    """Small seeds, params seeds, and integers read from every piece of public material."""
    seeds = set(SEEDS)
    for params in params_sets():
        seeds |= {s for s in params_seeds(params) if s >= 0}
    for data, _ in public_material():
        digest = hashlib.sha256(data).digest()
        seeds |= {int.from_bytes(digest[:4], "big"), int.from_bytes(digest[:8], "big") >> 1}
        if HEX.fullmatch(data):
            seeds.add(int(data, 16))
    return tuple(sorted(seeds))


# --- the attack -------------------------------------------------------------------------------

class Candidate(Randomness):
    """The randomness setting of a keyed run, with the key the attacker guesses."""
    candidate_key: bytes


@contextmanager
def chosen_keys():
    """DPRandom.for_purpose with the key the attacker chooses (``Candidate.candidate_key``): the
    project's own derivation of a stream from a key, replayed with a guess for the key."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(R, "load_key", lambda privacy: privacy.candidate_key)
        yield


def keyed_stream(key: bytes, purpose: str, binding: tuple) -> DPRandom:
    return DPRandom.for_purpose(purpose, *binding, privacy=Candidate(secure_mode=False, candidate_key=key))


@functools.lru_cache(maxsize=None)
def seed_noises(k: int, sigma: float) -> tuple[list[str], np.ndarray]:
    """N(0, sigma^2) draws of numpy (Generator and the legacy RandomState), torch (fp64 and fp32)
    and python `random` for every public integer seed."""
    labels, rows = [], []
    for s in public_int_seeds():
        legacy, g = s % 2 ** 32, torch.Generator().manual_seed(s % 2 ** 63)
        rows.append(np.random.default_rng(s).normal(0.0, sigma, k)), labels.append(f"numpy default_rng({s})")
        rows.append(np.random.RandomState(legacy).normal(0.0, sigma, k)), labels.append(f"numpy RandomState({legacy})")
        rows.append(torch.normal(0.0, sigma, (k,), generator=g, dtype=torch.float64).numpy())
        labels.append(f"torch manual_seed({s % 2 ** 63}) float64")
        g = torch.Generator().manual_seed(s % 2 ** 63)
        rows.append((torch.randn(k, generator=g) * sigma).double().numpy())
        labels.append(f"torch manual_seed({s % 2 ** 63}) randn")
        r = random.Random(s)
        rows.append(np.array([r.gauss(0.0, sigma) for _ in range(k)])), labels.append(f"python random.Random({s})")
    return labels, np.array(rows)


@functools.lru_cache(maxsize=None)
def stream_noises(k: int, sigma: float, bindings: tuple[tuple, ...]) -> tuple[list[str], np.ndarray]:
    """The project's own stream code on public material: DPRandom(seed) on every candidate (and
    its sha256), and DPRandom.for_purpose with every candidate (and its sha256) as the key, for
    each purpose and each binding the attacker can state."""
    labels, rows = [], []
    with chosen_keys():
        for data, what in public_material():
            for candidate, name in ((data, what), (hashlib.sha256(data).digest(), f"sha256({what})")):
                rows.append(DPRandom(candidate).normal((k,), sigma)), labels.append(f"DPRandom(seed={name})")
                for purpose in PURPOSES:
                    for binding in bindings:
                        rows.append(keyed_stream(candidate, purpose, binding).normal((k,), sigma))
                        labels.append(f"for_purpose({purpose!r}, {binding}) with key {name}")
    return labels, np.array(rows)


def public_bindings() -> tuple[tuple, ...]:
    """Bindings the attacker can state from public material: none, or the stage's params hash."""
    return ((), *((h,) for h in histogram_params_hashes()))


@dataclass
class Finding:
    share: float  # share of the unclipped clusters left a whole, non-negative count by the guess
    label: str
    counts: np.ndarray  # noisy minus the guessed noise, rounded (nan where the count was clipped)


def attack(noisy: np.ndarray, sigma: float, tol: float, bindings: tuple[tuple, ...]) -> Finding:
    """The candidate noise that leaves the most clusters with whole counts."""
    k, kept = len(noisy), noisy > 0  # clusters clipped to zero lost their noise
    best = None
    for names, matrix in (seed_noises(k, sigma), stream_noises(k, sigma, bindings)):
        residual = noisy[kept][None, :] - matrix[:, kept]
        whole = np.round(residual)
        share = ((np.abs(residual - whole) < tol) & (whole >= 0)).mean(axis=1)
        i = int(np.argmax(share))
        if best is None or share[i] > best.share:
            counts = np.full(k, np.nan)
            counts[kept] = whole[i]
            best = Finding(float(share[i]), names[i], counts)
    return best


def published(noisy: np.ndarray) -> tuple[np.ndarray, float]:
    """What the pipeline publishes of a noisy histogram: its shares at 1e-6 (plots/eval) and its total (metrics)."""
    return np.round(noisy / noisy.sum(), 6), float(noisy.sum())


def from_published(shares: np.ndarray, total: float) -> tuple[np.ndarray, float]:
    """The noisy counts back, and the tolerance the shares' rounding allows (2x its worst case)."""
    return shares * total, max(1e-4, 1e-6 * total)


# --- the committed release --------------------------------------------------------------------

def md5_matches(relative: str, entries: list[dict]) -> bool:
    path = REPO / relative
    want = [e.get("md5") for e in entries if e.get("path") == relative]
    return path.is_file() and bool(want) and hashlib.md5(path.read_bytes()).hexdigest() == want[0]


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def committed_target() -> tuple[np.ndarray, float, str]:
    outs = lock()["stages"].get("histogram", {}).get("outs", [])
    if md5_matches(NOISY_PARQUET, outs):
        return pd.read_parquet(REPO / NOISY_PARQUET).noisy_count.to_numpy(), 1e-4, NOISY_PARQUET
    missing = [shown(f) for f in (SHARES_CSV, NOISY_METRICS) if not f.exists()]
    if missing:
        pytest.skip(f"no committed noisy histogram to attack: {', '.join(missing)} missing (the pipeline regenerates "
                    f"them with `dvc repro`), and {NOISY_PARQUET} is absent or not the one dvc.lock records")
    shares = pd.read_csv(SHARES_CSV).dp_histogram.to_numpy()
    total = json.loads(NOISY_METRICS.read_text())["noisy_total"]
    noisy, tol = from_published(shares, total)
    return noisy, tol, f"{shown(SHARES_CSV)} x noisy_total of {shown(NOISY_METRICS)}"


def stage_binding(params: dict) -> tuple[str, tuple]:
    """The purpose and binding stages/histogram.py derives its stream from on the inputs in the
    working directory: its own code runs up to DPRandom.for_purpose, which records them and stops
    (no key is read, nothing is written)."""
    from stages import histogram as H

    class Seen(Exception):
        pass

    class Recorder:
        @classmethod
        def for_purpose(cls, purpose, *binding, privacy):
            raise Seen(purpose, binding)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(H, "DPRandom", Recorder)
        try:
            H.histogram(params, out=None)
        except Seen as seen:
            return seen.args
    raise AssertionError("stages/histogram.py no longer draws its noise from DPRandom.for_purpose")


def committed_stage_binding() -> list[tuple]:
    """The committed run's binding, when its private inputs are here and are the ones dvc.lock
    records: the attacker is granted it (the binding is not secret; the key is)."""
    stage = lock()["stages"].get("histogram", {})
    inputs = [d["path"] for d in stage.get("deps", []) if not d["path"].startswith(CODE_DIRS)]
    if not inputs or not all(md5_matches(p, stage["deps"]) for p in inputs):
        return []
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(copy.deepcopy((stage.get("params") or {}).get("params.yaml", {})))
    with pytest.MonkeyPatch.context() as m:
        m.chdir(REPO)
        purpose, binding = stage_binding(params)
    assert purpose in PURPOSES, f"the stage's purpose {purpose!r} is not among those the attack tries"
    return [binding]


def test_the_committed_release_resists_the_attack():
    noisy, tol, source = committed_target()
    sigma = float(json.loads(NOISY_METRICS.read_text())["sigma"]) if NOISY_METRICS.exists() else \
        float(yaml.safe_load((REPO / "params.yaml").read_text())["histogram"]["sigma"])
    if sigma == 0:
        pytest.skip("the committed histogram is the non-private baseline (sigma 0): exact counts by design")
    assert (noisy > 0).sum() >= 8, "too few unclipped clusters for the attack to mean anything"
    bindings = public_bindings() + tuple(committed_stage_binding())
    found = attack(noisy, sigma, tol, bindings)
    assert found.share < 0.5, (f"{found.label} explains {found.share:.0%} of the committed noisy counts ({source}) "
                               f"as whole numbers: the private counts are {found.counts}")


# --- positive controls: the attack has power --------------------------------------------------

COUNTS = np.random.default_rng(5).integers(50, 500, 16).astype(float)  # the committed release's shape
SIGMA = 10.0


def attack_published(noisy: np.ndarray, bindings=None) -> Finding:
    """The committed test's attack on what the pipeline would publish of this histogram."""
    target, tol = from_published(*published(noisy))
    return attack(target, SIGMA, tol, public_bindings() if bindings is None else bindings)


def weak_stream(name: str) -> DPRandom:
    """A stream anyone can derive: the stage's purpose and params-hash binding with a weak key, or a
    DPRandom seeded with public bytes."""
    phash = histogram_params_hashes()[0]
    keys = {"zero key": (bytes(R.KEY_BYTES), (phash,)), "params hash as key": (phash.encode(), (phash,)),
            "DOMAIN as key, no binding": (R.DOMAIN, ())}
    if name in keys:
        key, binding = keys[name]
        with chosen_keys():
            return keyed_stream(key, "histogram/noise", binding)
    if name == "seed: sha256 of params.yaml":
        return DPRandom(hashlib.sha256((REPO / "params.yaml").read_bytes()).digest())
    if name == "seed: sha256 hex of the stage code":
        return DPRandom(hashlib.sha256((REPO / "stages/histogram.py").read_bytes()).hexdigest().encode())
    raise KeyError(name)


@pytest.mark.parametrize("name", ["zero key", "params hash as key", "DOMAIN as key, no binding",
                                  "seed: sha256 of params.yaml", "seed: sha256 hex of the stage code"])
def test_the_attack_recovers_the_counts_when_the_stream_comes_from_a_weak_key(name):
    # The library mechanism (release: counts + DPRandom.normal, clipped at 0) with a stream anyone
    # can derive: the same attack, on the same published form, gives back every exact count.
    found = attack_published(release(COUNTS, SIGMA, weak_stream(name)))
    assert found.share == 1.0, f"{name}: the attack found only {found.share:.0%}"
    assert np.array_equal(found.counts, COUNTS), name


@pytest.mark.parametrize("source", ["numpy", "legacy", "torch", "python"])
def test_the_attack_recovers_the_counts_when_the_noise_comes_from_a_public_seed(source):
    seed = max(params_seeds(yaml.safe_load((REPO / "params.yaml").read_text())) | {123})
    noise = {"numpy": lambda: np.random.default_rng(seed).normal(0.0, SIGMA, 16),
             "legacy": lambda: np.random.RandomState(seed).normal(0.0, SIGMA, 16),
             "torch": lambda: torch.normal(0.0, SIGMA, (16,), generator=torch.Generator().manual_seed(seed),
                                           dtype=torch.float64).numpy(),
             "python": lambda: np.array([g.gauss(0.0, SIGMA) for g in [random.Random(seed)] for _ in range(16)])}[source]()
    found = attack_published(np.clip(COUNTS + noise, 0, None))
    assert found.share == 1.0 and np.array_equal(found.counts, COUNTS), (source, found.label, found.share)


def test_the_attack_finds_nothing_when_the_key_is_secret():
    # The negative control: a real 32-byte secret key through the same code path.
    with chosen_keys():
        stream = keyed_stream(os.urandom(R.KEY_BYTES), "histogram/noise", (histogram_params_hashes()[0],))
    found = attack_published(release(COUNTS, SIGMA, stream))
    assert found.share < 0.5, found


def test_the_attack_replays_the_histogram_stage_run_with_a_weak_key(tmp_path, monkeypatch):
    # End to end through stages/histogram.py (k-means by the cluster stage on stand-in embeddings):
    # a run whose key is 32 zero bytes is recovered exactly once the attacker knows the stage's
    # binding, which stage_binding reads off the stage's own code; a run with a real key is not.
    from dpinstruct.embeddings import bucketing, embedding_io
    from dpinstruct.io.artifacts import Outputs, read_metadata, read_table, table_metadata, write_parquet
    from dpinstruct.privacy.histogram import exact_counts
    from stages import cluster
    from stages import histogram as H

    params = {"privacy": {"epsilon": 6.0, "delta": 1e-5, "secure_mode": False}, "histogram": {"sigma": SIGMA},
              "user_level": {"enabled": False, "max_records_per_user": 8},
              "cluster": {"explained_variance": 0.9, "k": 8, "niter": 20, "nredo": 1, "seed": 0,
                          "max_points_per_centroid": 256}}
    monkeypatch.chdir(tmp_path)
    centres = np.random.default_rng(99).normal(size=(8, 24)) * 3

    def write_embeddings(path, n, seed, privacy):
        rng = np.random.default_rng(seed)
        vectors = (centres[rng.integers(8, size=n)] + rng.normal(size=(n, 24))).astype(np.float32)
        table = embedding_io.to_table([f"{path}-{i}" for i in range(n)], vectors)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_parquet(table, path, table.schema, table_metadata("test", "x", privacy))
        return table.column("id").to_pylist(), vectors

    write_embeddings(cluster.POOL_EMBEDDINGS, 400, 0, "dp")
    with Outputs() as out:
        cluster.cluster(params, out)
    ids, private = write_embeddings(H.TRAIN_EMBEDDINGS, 300, 1, "private")
    Path(H.TRAIN).parent.mkdir(parents=True, exist_ok=True)
    train = pa.table({"id": ids, "instruction": ["x"] * len(ids), "user_id": pa.array([None] * len(ids), pa.string())})
    write_parquet(train, H.TRAIN, train.schema, table_metadata("test", "x", "private"))
    if importlib.util.find_spec("stages.dp_count"):  # the stage refuses delta >= 1/N~ on the DP count of its records
        from stages import dp_count

        params["dp_count"] = {"sigma": 5.0}
        with Outputs() as out:
            dp_count.count("instructions", params, out)
    buckets = bucketing.from_table(read_table(H.BUCKETS), read_metadata(H.BUCKETS)["buckets"])
    exact = exact_counts(buckets.assign(private), len(buckets.centroids))

    purpose, binding = stage_binding(params)
    assert purpose in PURPOSES
    runs = {}
    for name, key in (("weak", bytes(R.KEY_BYTES)), ("secret", os.urandom(R.KEY_BYTES))):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(R, "load_key", lambda privacy, key=key: key)
            with Outputs() as out:
                H.histogram(params, out)
        runs[name] = pd.read_parquet(H.NOISY).noisy_count.to_numpy()
    weak = attack(runs["weak"], SIGMA, 1e-4, (binding,))
    assert weak.share == 1.0 and np.array_equal(weak.counts[runs["weak"] > 0], exact[runs["weak"] > 0]), weak
    assert attack(runs["secret"], SIGMA, 1e-4, (binding,)).share < 0.5


# Every dp-class file the pipeline commits (published under the threat model) and the private
# metrics that hold the true sizes (the data owner's; the attacker never sees them).
DP_FILES = ("metrics/privacy.json", "metrics/privacy/*.json", "metrics/histogram.json", "metrics/resample.json",
            "metrics/rl.json", "dvclive/rlhf_ppo/release/metrics.json", "dvclive/rlhf_ppo/flan/metrics.json")
SIZE_FILES = ("metrics/prepare.json", "metrics/rl/prepare.json", "metrics/rlhf/prepare.json")


def _numbers(node, skip=("fingerprint",)) -> list[float]:
    if isinstance(node, dict):
        return [x for k, v in node.items() if k not in skip for x in _numbers(v, skip)]
    if isinstance(node, list):
        return [x for v in node for x in _numbers(v, skip)]
    if isinstance(node, (int, float)) and not isinstance(node, bool) and np.isfinite(node) and node != 0:
        return [float(node)]
    return []


def _published() -> tuple[list[float], list[float]]:
    """(every number in a committed dp file, the DP counts among them)."""
    values, noisy = [], []
    for pattern in DP_FILES:
        for f in sorted(REPO.glob(pattern)):
            obj = json.loads(f.read_text())
            values += _numbers(obj)
            noisy += [float(obj["noisy_count"])] if isinstance(obj, dict) and "noisy_count" in obj else []
    return values, noisy


def _estimates(values: list[float]) -> np.ndarray:
    """What an attacker computes from published numbers: each one, and every ratio and product of
    two (B / q gave N before the DP count: 3,832 for 3,828 records). A ratio or product of two
    params values (0.05 / 1e-5 = 5,000) is known before any data is read and says nothing about
    it, so at least one operand is a number the params do not hold."""
    v = np.unique(np.asarray(values))
    data = ~np.isin(v, PARAMS_VALUES)
    pairs = data[:, None] | data[None, :]
    return np.concatenate([v, (v[:, None] / v[None, :])[pairs], (v[:, None] * v[None, :])[pairs]])


PARAMS_VALUES = np.unique(_numbers(yaml.safe_load((REPO / "params.yaml").read_text())))


# A number derived from N (the old divisor q x N, over q) gives N back to float precision. Within
# +-0.5 instead, chance alone finds hits among the ~16,000 ratios and products of ~90 published
# numbers (123.35 / 0.5503 = 224.15: the PPO batch q x N~ over the generator's sigma, against a val
# split of 224), so "exact" is relative 1e-6.
EXACT = 1e-6


def test_no_published_number_gives_a_private_size_better_than_its_dp_noise():
    values, noisy = _published()
    if not noisy:
        pytest.skip("no committed DP count (dvc repro writes metrics/privacy/dp_count@*.json)")
    sizes = {int(v) for f in SIZE_FILES if (REPO / f).exists()
             for v in _numbers(json.loads((REPO / f).read_text())) if v >= 100}
    estimates = _estimates(values)
    for n in sorted(sizes):
        hits = estimates[np.abs(estimates - n) < EXACT * n]
        # Only a DP count itself may land within rounding of a true size (it does with probability
        # about 1/sigma), and then the attacker learned N~, not N: every hit must be one.
        unexplained = [h for h in hits if not any(abs(h - c) < 1e-6 * max(1.0, c) for c in noisy)]
        assert not unexplained, f"published numbers give the private size {n} exactly: {unexplained[:5]}"


def test_the_ratio_attack_has_power():
    """A control of the attack's own code (its ratios, the filter of params-only pairs): it finds
    what the ledger does publish, N~ as the divisor over q, and that N~ is a DP count, not N; and
    given the old ledgers' divisor q x N it would have found N, so the test above has power."""
    values, noisy = _published()
    if not noisy:
        pytest.skip("no committed DP count (dvc repro writes metrics/privacy/dp_count@*.json)")
    estimates = _estimates(values)
    entry = json.loads((REPO / "metrics/privacy/train_generator.json").read_text())
    n_tilde = entry["plan"]["expected_batch_size"] / entry["sampling_rate"]
    assert np.any(np.abs(estimates - n_tilde) < 1e-6 * n_tilde) and min(abs(n_tilde - c) for c in noisy) < 1e-6 * n_tilde
    n = json.loads((REPO / "metrics/prepare.json").read_text())["private"]["train"]
    old = _estimates([*values, entry["sampling_rate"] * n])  # the old divisor, q x N
    assert np.any(np.abs(old - n) < EXACT * n)
