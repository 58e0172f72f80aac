"""Where every DP random number comes from: a secret key, or the operating system's CSPRNG.

Threat model (stated once, in the package docstring of ``dpinstruct.privacy``): published are the
export bundle (``dpinstruct export``) and every dp-class output; the attacker holds all of it plus
params.yaml and the code. The git repository (dvc.lock, private metrics) and the DVC remote stay
with the data owner. The randomness a DP proof relies on (Poisson sampling of DP-Adam, its Gaussian
noise, the histogram's noise, and any later mechanism's) must be unpredictable to the attacker, so
it never comes from a seed in params.yaml: seeds there drive only what no proof relies on (LoRA
init, data splits, k-means, generation, evaluation draws). The key is the one secret the proofs
rest on: whoever holds it and the published outputs can recompute, and subtract, every draw of
the noise. It is therefore kept narrower than the repository and the DVC remote, which are private
but shared (collaborators, clones, backups, queued experiments' copies).

Two modes, the same transforms:

* keyed (default): a 32-byte secret key, made with ``os.urandom`` on first use and kept in a file
  (``privacy.key_file``, default ``~/.config/dpinstruct/secret.key``; the environment variable
  ``DPINSTRUCT_KEY_FILE`` overrides it). Each consumer draws from its own stream, seed =
  HMAC-SHA256(key, purpose, binding), the binding being the stage's whole run key (its params,
  the digest of every input it reads and of its code: ``run_key``); bytes are SHAKE-256(seed ||
  counter), a deterministic cryptographic generator. So whoever holds the key replays a run bit for
  bit, nobody else can recompute a single draw, and two runs share noise only if they are the same
  run (a subtraction would otherwise reveal the difference exactly). The randomness setting
  (``key_file``, ``secure_mode``) is read from params' ``privacy`` section by every DP stage.
* secure (``privacy.secure_mode: true``): no key; bytes come from ``os.urandom``. Not replayable.

Where the key may live: ``load_key`` refuses (``PrivacyConfigError``), as ssh does with a private
key,

* a relative path (after expanding $VARS and ~): it would resolve against the working directory,
  so a ``dvc exp run`` in a temporary copy of the project would silently make a NEW key; only
  absolute or ``~/`` paths;
* a key file that any other user may read or write: ``chmod 600`` it;
* a key inside a git work tree that is not git-ignored: one ``git add -A`` would commit it;
* a key inside a DVC output of an enclosing project (a stage's ``outs``, ``metrics`` or ``plots``
  in its dvc.yaml, and its data/, metrics/, plots/ and dvclive/ folders): ``dvc repro`` deletes
  an output before re-making it (and with it the key: a new one, silently), and once cached with
  the output ``dvc push`` copies it to the remote.

Transforms: a uniform is the top 53 bits of a 64-bit word times 2^-53, so ``u < q`` includes a
record with probability q up to 2^-53. A Gaussian draw is Box-Muller on two uniforms, and every
N(0, std^2) value returned is the sum of four such draws divided by two, as opacus' secure_mode
does (Holohan and Braghin 2021, section 5.1), against floating-point attacks on a single draw.
The key itself is never logged, never written into an artifact and never part of a params hash.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import stat
import subprocess
from pathlib import Path

import numpy as np

from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.io.settings.privacy import Randomness

log = logging.getLogger(__name__)
KEY_BYTES = 32
KEY_FILE_ENV = "DPINSTRUCT_KEY_FILE"
DEFAULT_KEY_FILE = "~/.config/dpinstruct/secret.key"
DOMAIN = b"dpinstruct/dp-randomness/v1"


def key_path(privacy: Randomness | None) -> Path:
    """The key file: $DPINSTRUCT_KEY_FILE, else privacy.key_file, else the per-user default.
    Absolute (or ``~``) paths only: a relative one is refused."""
    source, chosen = "the default key file", DEFAULT_KEY_FILE
    if os.environ.get(KEY_FILE_ENV):
        source, chosen = f"${KEY_FILE_ENV}", os.environ[KEY_FILE_ENV]
    elif privacy is not None and privacy.key_file:
        source, chosen = "privacy.key_file", privacy.key_file
    path = Path(os.path.expanduser(os.path.expandvars(str(chosen))))
    if not path.is_absolute():
        raise PrivacyConfigError(
            f"{source} is the relative path {chosen!r}: a relative key file resolves against the working directory, "
            "so a run from another folder (a `dvc exp run` in its temporary copy of the project, a queued "
            "experiment) would silently make a NEW key and its DP noise would not replay; give an absolute path "
            f"or one starting with ~/ (e.g. {DEFAULT_KEY_FILE}), outside the project")
    return Path(os.path.normpath(path))


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


DVC_FOLDERS = ("data", "metrics", "plots", "dvclive")  # a project's output folders, whatever dvc.yaml says
_TEMPLATE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


def _lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (str, int, float)) else None


def _declared_outputs(root: Path) -> list[tuple[str, bool]]:
    """The outputs dvc.yaml under ``root`` declares, as (path, templated): a stage's ``outs``,
    ``metrics`` and ``plots`` (strings or one-key dicts; a foreach/matrix stage's ``do:`` body too).
    ``${...}`` naming a params.yaml value is filled in; a template left (``${item}``, ``${key}``)
    stands for everything its prefix starts. Read with yaml alone: no dvc import."""
    import yaml

    try:
        spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return [("", True)]  # unreadable: the whole project counts as an output (fail safe)
    try:
        params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        params = {}
    found = []
    stages = spec.get("stages") if isinstance(spec, dict) else None
    for stage in (stages or {}).values():
        if not isinstance(stage, dict):
            continue
        body = stage.get("do") if isinstance(stage.get("do"), dict) else stage
        for key in ("outs", "metrics", "plots"):
            for entry in body.get(key) or []:
                names = [entry] if isinstance(entry, str) else list(entry) if isinstance(entry, dict) else []
                for name in (n for n in names if isinstance(n, str)):
                    filled = _TEMPLATE.sub(lambda m: str(v) if (v := _lookup(params, m.group(1))) is not None
                                           else m.group(0), name)
                    if "${" in filled:
                        found.append((filled[:filled.index("${")], True))
                    else:
                        found.append((os.path.normpath(filled).replace(os.sep, "/"), False))
    return found


def _refuse_dvc_output(path: Path) -> None:
    """A key inside a DVC output of an enclosing project (the nearest dvc.yaml above it, and any
    further up) is deleted by `dvc repro` with its output and, once cached, pushed to the remote."""
    candidates = {path}
    with contextlib.suppress(OSError, RuntimeError):
        candidates.add(path.resolve())  # a symlinked folder must not hide an output
    for key in candidates:
        for root in key.parents:
            if not (root / "dvc.yaml").is_file():
                continue
            rel = key.relative_to(root).as_posix()
            outputs = [(folder, False) for folder in DVC_FOLDERS] + _declared_outputs(root)
            for out, templated in outputs:
                inside = rel.startswith(out) if templated else rel == out or rel.startswith(out + "/")
                if inside:
                    what = (f"the folder {out}/ of the DVC project" if out in DVC_FOLDERS else
                            f"the output {out}{'${...}' if templated else ''} declared in the dvc.yaml of")
                    raise PrivacyConfigError(
                        f"the secret key file {key} lies inside {what} {root}: `dvc repro` deletes a stage's outputs "
                        "(and with them the key) and `dvc push` copies cached outputs to the remote; keep the key "
                        f"outside every DVC output, e.g. {DEFAULT_KEY_FILE} (privacy.key_file or $DPINSTRUCT_KEY_FILE)")


def _refuse_loose_permissions(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PrivacyConfigError(f"the secret key file {path} has permissions {mode:04o}: other users may read or "
                                 f"write it, so it is refused (as ssh refuses a private key); run `chmod 600 {path}` "
                                 "and, if anyone else may have read it, delete it to make a new key")


def load_key(privacy: Randomness | None) -> bytes:
    """The secret key, made (0600, in a 0700 folder) when the file does not exist yet. Refused:
    a relative path, loose permissions, a place inside an un-ignored git work tree or a DVC output."""
    path = key_path(privacy)
    _refuse_dvc_output(path)
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
    _refuse_loose_permissions(path)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise PrivacyConfigError(f"secret key file {path} holds {len(key)} bytes, expected {KEY_BYTES}: restore it, "
                                 "or delete it to make a new key (DP outputs will then differ from dvc.lock)")
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
    def for_purpose(cls, purpose: str, *binding, privacy: Randomness | None) -> "DPRandom":
        """The stream of one mechanism of one run; ``privacy`` is params' randomness setting (None:
        the defaults, a keyed stream from the default key file)."""
        if privacy is not None and privacy.secure_mode:
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
