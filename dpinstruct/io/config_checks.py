"""Type checks of params.yaml values, for the stages that read user data: a wrong type stops the
stage before any file is read, with the key's full name (``ConfigError``), instead of a Python
error deep inside, or a silent coercion (``int("1e3")`` fails, ``int(2.7)`` truncates)."""
from __future__ import annotations

import math
from pathlib import Path

from dpinstruct.io.errors import ConfigError


def integer(cfg: dict, key: str, section: str, *, minimum: int = 0, nullable: bool = False) -> int | None:
    value = cfg.get(key)
    if value is None and nullable:
        return None
    # YAML reads 500 as int and 500.0 as float; accept a float only when it is whole
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{section}.{key}", f"must be an integer >= {minimum}{' or null' if nullable else ''}, "
                                              f"got {value!r}")
    return value


def number(cfg: dict, key: str, section: str) -> float:
    value = cfg.get(key)
    # NaN would pass every later range check (all comparisons with NaN are False)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{section}.{key}", f"must be a finite number, got {value!r}")
    return float(value)


def boolean(cfg: dict, key: str, section: str) -> bool:
    value = cfg.get(key)
    if not isinstance(value, bool):
        raise ConfigError(f"{section}.{key}", f"must be true or false, got {value!r}")
    return value


def path(cfg: dict, key: str, section: str) -> Path:
    value = cfg.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{section}.{key}", f"must be a file path, got {value!r}")
    return Path(value)


def cleaning(cfg: dict, section: str) -> dict:
    """The cleaning rules shared by `prepare` and `prepare_public` (dpinstruct/text/cleaning.py)."""
    checked = {"min_tokens": integer(cfg, "min_tokens", section, minimum=1),
               "max_tokens": integer(cfg, "max_tokens", section, minimum=1),
               "dedup_casefold": boolean(cfg, "dedup_casefold", section),
               "ngram_dedup_n": integer(cfg, "ngram_dedup_n", section)}
    if checked["min_tokens"] > checked["max_tokens"]:
        raise ConfigError(f"{section}.min_tokens", f"{checked['min_tokens']} exceeds {section}.max_tokens "
                                                   f"{checked['max_tokens']}: every row would be dropped")
    return checked
