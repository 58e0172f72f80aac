"""A request cache for remote chat completions: a re-run or a resumed run never pays twice.

Keyed by the request itself, sha256 of the canonical JSON of (model, messages, decoding params),
so the same question to the same model with the same decoding is sent once, whatever the set or
the run. One SQLite file; only the thread that owns the cache reads and writes it, and every
insert is committed at once, so a killed run keeps every answer it received. The cache holds
instructions' answers: it is as private as the most private set that used it (it lives under
data/checkpoints/, git-ignored, never a DVC output).
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path


def request_key(model: str, messages: list[dict], decoding: dict) -> str:
    blob = json.dumps({"model": model, "messages": messages, "decoding": decoding}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    def __init__(self, path: Path | str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path))
        # WAL + synchronous=NORMAL: a killed process loses no committed answer (the OS holds the log),
        # and a commit costs no fsync, which at one commit per answer would cap throughput.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, json.dumps(value)))
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
