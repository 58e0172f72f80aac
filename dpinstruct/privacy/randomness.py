"""Where every DP random number comes from: a secret key, or the operating system's CSPRNG.

Threat model: the attacker holds everything public: the code, params.yaml, dvc.lock, the committed
metrics and the released artifacts. The randomness a DP proof relies on (Poisson sampling of
DP-Adam, its Gaussian noise, the histogram's noise, and any later mechanism's) must be
unpredictable to them. Seeds in params.yaml drive only what no proof relies on (LoRA init, data
splits, k-means, generation, evaluation draws).

Two modes, the same transforms:

* keyed (default): a 32-byte secret key, made with ``os.urandom`` on first use and kept in a file
  outside git and outside every DVC output (``privacy.key_file``, default
  ``~/.config/dpinstruct/secret.key``; the environment variable ``DPINSTRUCT_KEY_FILE`` overrides
  it). Each consumer draws from its own stream, seed = HMAC-SHA256(key, purpose, binding), the
  binding naming the run (the stage's params hash and the digests of its private inputs); bytes
  are SHAKE-256(seed || counter), a deterministic cryptographic generator. So whoever holds the key
  replays a run bit for bit, nobody else can recompute a single draw, and two runs on different
  data never share noise (a subtraction would otherwise reveal the difference exactly).
* secure (``privacy.secure_mode: true``): no key; bytes come from ``os.urandom``. Not replayable.

Transforms: a uniform is the top 53 bits of a 64-bit word times 2^-53, so ``u < q`` includes a
record with probability q up to 2^-53. A Gaussian draw is Box-Muller on two uniforms, and every
N(0, std^2) value returned is the sum of four such draws divided by two, as opacus' secure_mode
does (Holohan and Braghin 2021, section 5.1), against floating-point attacks on a single draw.
The key itself is never logged, never written into an artifact and never part of a params hash.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import subprocess
from pathlib import Path

import numpy as np

from dpinstruct.io.errors import PrivacyConfigError

log = logging.getLogger(__name__)
KEY_BYTES = 32
KEY_FILE_ENV = "DPINSTRUCT_KEY_FILE"
DEFAULT_KEY_FILE = "~/.config/dpinstruct/secret.key"
DOMAIN = b"dpinstruct/dp-randomness/v1"


def key_path(privacy: dict | None) -> Path:
    """The key file: $DPINSTRUCT_KEY_FILE, else privacy.key_file, else the per-user default."""
    chosen = os.environ.get(KEY_FILE_ENV) or (privacy or {}).get("key_file") or DEFAULT_KEY_FILE
    return Path(os.path.expandvars(str(chosen))).expanduser().absolute()


def _refuse_tracked_location(path: Path) -> None:
    """A key inside a git work tree must be git-ignored, or one `git add -A` publishes it."""
    try:
        top = subprocess.run(["git", "-C", str(path.parent), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=False)
    except FileNotFoundError:
        return
    if top.returncode != 0:
        return  # not inside a git work tree (or its folder does not exist yet)
    ignored = subprocess.run(["git", "-C", top.stdout.strip(), "check-ignore", "-q", str(path)], check=False)
    if ignored.returncode != 0:
        raise PrivacyConfigError(f"the secret key file {path} lies inside the git work tree {top.stdout.strip()} and "
                                 "is not git-ignored: move it (privacy.key_file or $DPINSTRUCT_KEY_FILE) or ignore it")


def load_key(privacy: dict | None) -> bytes:
    """The secret key, made (0600, in a 0700 folder) when the file does not exist yet."""
    path = key_path(privacy)
    if path.parent.exists():
        _refuse_tracked_location(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _refuse_tracked_location(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(KEY_BYTES))
        log.warning("made a new secret key for DP randomness at %s: keep it (and back it up) to reproduce this "
                    "run's DP outputs exactly; never commit or share it", path)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise PrivacyConfigError(f"secret key file {path} holds {len(key)} bytes, expected {KEY_BYTES}: restore it, "
                                 "or delete it to make a new key (DP outputs will then differ from dvc.lock)")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secret key file %s is readable by other users: chmod 600 it", path)
    return key


def _canonical(part) -> bytes:
    data = part if isinstance(part, bytes) else str(part).encode()
    return len(data).to_bytes(8, "big") + data  # length-prefixed: no two bindings serialise alike


class DPRandom:
    """A stream of DP random numbers (keyed and replayable, or from the OS and not).

    ``state()``/``restore()`` carry a keyed stream across a checkpoint (the counter only: the seed
    is re-derived from the key, so checkpoints never hold it).
    """

    def __init__(self, seed: bytes | None):
        self._seed, self._counter = seed, 0

    @classmethod
    def for_purpose(cls, purpose: str, *binding, privacy: dict | None) -> "DPRandom":
        """The stream of one mechanism of one run; ``privacy`` is params' privacy section."""
        if bool((privacy or {}).get("secure_mode", False)):
            return cls(None)
        message = DOMAIN + b"".join(_canonical(p) for p in (purpose, *binding))
        return cls(hmac.new(load_key(privacy), message, hashlib.sha256).digest())

    @property
    def replayable(self) -> bool:
        return self._seed is not None

    def resume_tag(self) -> str:
        """Names the stream in a checkpoint's run key without revealing it (a MAC of its seed), so a
        checkpoint made under another key is never resumed; "os" for the OS source."""
        return "os" if self._seed is None else hmac.new(self._seed, b"resume-tag", hashlib.sha256).hexdigest()[:16]

    def child_seed(self, *parts) -> int:
        """A 63-bit seed for one named draw (e.g. one prompt's rollouts at one step), a function of
        the key, this stream and ``parts`` alone: unlike the stream's own draws it does not depend on
        how many draws came before. Fresh from the OS in secure mode."""
        if self._seed is None:
            return int.from_bytes(os.urandom(8), "big") >> 1
        mac = hmac.new(self._seed, b"child" + b"".join(_canonical(p) for p in parts), hashlib.sha256).digest()
        return int.from_bytes(mac[:8], "big") >> 1

    def random_bytes(self, n: int) -> bytes:
        if self._seed is None:
            return os.urandom(n)
        self._counter += 1
        return hashlib.shake_256(self._seed + self._counter.to_bytes(8, "big")).digest(n)

    def uniform(self, n: int) -> np.ndarray:
        """n doubles uniform on [0, 1), multiples of 2^-53."""
        words = np.frombuffer(self.random_bytes(8 * n), dtype="<u8")
        return (words >> np.uint64(11)).astype(np.float64) * 2.0 ** -53

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        """n independent draws, True with probability p (Poisson sampling's inclusion)."""
        return self.uniform(n) < p

    def _standard_normal(self, n: int) -> np.ndarray:
        pairs = (n + 1) // 2
        u = self.uniform(2 * pairs)
        radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))  # 1 - u lies in (0, 1]: log is finite
        angle = 2.0 * np.pi * u[pairs:]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]

    def normal(self, shape, std: float) -> np.ndarray:
        """N(0, std^2) of the given shape (float64): (z1 + z2 + z3 + z4) / 2 of standard draws."""
        n = int(np.prod(shape, dtype=np.int64))
        z = self._standard_normal(4 * n).reshape(4, n).sum(axis=0) / 2.0
        return (std * z).reshape(shape)

    def state(self) -> dict | None:
        return {"counter": self._counter} if self.replayable else None

    def restore(self, state: dict | None) -> None:
        if self.replayable and state is not None:
            self._counter = int(state["counter"])
