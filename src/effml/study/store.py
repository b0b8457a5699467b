"""The experiment store: one SQLite row per variant, safe to kill and to share.

WAL mode lets readers run beside one writer; a busy timeout makes two writer processes take turns.
Each variant is written in its own transaction under a key derived from its technique chain, so a
study killed half-way keeps every finished variant and, run again, skips them (no duplicates, nothing
lost). Artifacts (e.g. the trained baseline's weights, as safetensors bytes) live beside the runs so a
resumed study does not retrain what it already has.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from effml.errors import ConfigError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study TEXT NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    chain TEXT NOT NULL,
    metrics TEXT NOT NULL,
    predictions TEXT NOT NULL,
    machine TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (study, key)
);
CREATE TABLE IF NOT EXISTS artifacts (
    study TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (study, key)
);
"""


@dataclass
class Run:
    """One variant of a study: how it was made (chain), what it scored and cost (metrics, predictions)."""

    study: str
    key: str  # stable identity of the variant within the study
    name: str  # human-readable, e.g. "prune-fine-80%+kmeans-4b"
    chain: list[dict]  # [{"technique": "prune", "config": {...}}, ...]; [] for the baseline
    metrics: dict  # accuracy, params, model_bytes, flops, macs, latency_p50_s, ... (measured or counted)
    predictions: dict = field(default_factory=dict)  # device -> {latency_s, energy_j, usd_per_1m, fits, ...}
    machine: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    id: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Store:
    """`with Store("runs.db") as s: s.put(run); s.runs("default")`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise ConfigError(f"store {str(self.path)!r} is a directory, not an SQLite file")
        deadline = time.monotonic() + 60.0
        while True:
            self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            try:
                self._setup()
                return
            except sqlite3.DatabaseError as exc:
                self.conn.close()
                # Switching a new file to WAL takes an exclusive lock and does not wait on busy_timeout: two
                # processes opening the same new store at once see "database is locked" (seen in CI). Retry.
                busy = isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))
                if busy and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise ConfigError(f"store {str(self.path)!r} is not an effml SQLite store ({exc}); "
                                  "choose another --store path") from None

    def _setup(self) -> None:
        self.conn.execute("PRAGMA busy_timeout=60000")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        self._check_version()

    def _check_version(self) -> None:
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        (version,) = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if int(version) != SCHEMA_VERSION:
            raise ConfigError(f"store {str(self.path)!r} has schema version {version}, this effml reads "
                              f"{SCHEMA_VERSION}")

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # ---- runs ----------------------------------------------------------------------------------------
    def put(self, run: Run) -> bool:
        """Insert a finished variant; False (and nothing written) if the study already has its key."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO runs (study, key, name, chain, metrics, predictions, machine, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run.study, run.key, run.name, json.dumps(run.chain), json.dumps(run.metrics),
             json.dumps(run.predictions), json.dumps(run.machine), run.created))
        return cur.rowcount == 1

    def has(self, study: str, key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM runs WHERE study = ? AND key = ?", (study, key)).fetchone() is not None

    def get(self, study: str, key: str) -> Run | None:
        rows = self._select("WHERE study = ? AND key = ?", (study, key))
        return rows[0] if rows else None

    def runs(self, study: str | None = None) -> list[Run]:
        """Every run (of one study, or all), in the order they finished."""
        if study is None:
            return self._select("", ())
        return self._select("WHERE study = ?", (study,))

    def studies(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT study FROM runs ORDER BY study")]

    def _select(self, where: str, params: tuple) -> list[Run]:
        cols = "id, study, key, name, chain, metrics, predictions, machine, created"
        out = []
        for (id_, study, key, name, chain, metrics, preds, machine, created) in self.conn.execute(
                f"SELECT {cols} FROM runs {where} ORDER BY id", params):
            out.append(Run(study, key, name, json.loads(chain), json.loads(metrics), json.loads(preds),
                           json.loads(machine), created, id_))
        return out

    # ---- artifacts -----------------------------------------------------------------------------------
    def put_artifact(self, study: str, key: str, data: bytes) -> None:
        self.conn.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?)", (study, key, sqlite3.Binary(data)))

    def get_artifact(self, study: str, key: str) -> bytes | None:
        row = self.conn.execute("SELECT data FROM artifacts WHERE study = ? AND key = ?", (study, key)).fetchone()
        return bytes(row[0]) if row else None
