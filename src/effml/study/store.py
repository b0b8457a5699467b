"""The experiment store: one SQLite row per variant, safe to kill and to share.

WAL mode lets readers run beside one writer; a busy timeout makes two writer processes take turns.
Each variant is written in its own transaction under a key derived from its technique chain, so a
study killed half-way keeps every finished variant and, run again, skips them (no duplicates, nothing
lost). Artifacts (e.g. the trained baseline's weights, as safetensors bytes) live beside the runs so a
resumed study does not retrain what it already has.

Claims let several workers share one study: a worker claims a variant's key for `ttl_s` seconds before
computing it (`claim`, atomic: BEGIN IMMEDIATE here), renews it while it computes (`renew`), and `put`
removes it. A claim that is not renewed (a killed worker) expires and may be taken over. `Store(target)`
takes a path, `sqlite:///path` or a `postgresql://` URL (the same tables on a PostgreSQL server, store_pg.py).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from effml.errors import ConfigError
from effml.guards import describe_file

SCHEMA_VERSION = 1
APPLICATION_ID = 0x45464D4C  # 'EFML' in the header's application id field: marks the file as an effml store
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
_CLAIMS = """CREATE TABLE IF NOT EXISTS claims (
    study TEXT NOT NULL, key TEXT NOT NULL, worker TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (study, key)
)"""
# URL schemes a store opens besides a plain path and sqlite:///PATH: scheme -> "module:class"
URL_BACKENDS = {"postgresql": "effml.study.store_pg:PgStore", "postgresql+psycopg2": "effml.study.store_pg:PgStore",
                "postgresql+psycopg": "effml.study.store_pg:PgStore"}


def is_url(target) -> bool:
    """A database URL (postgresql://..., sqlite:///...), as opposed to a file path."""
    return isinstance(target, str) and "://" in target


def _backend(target):
    """The Store class that opens `target`: this one for a path or sqlite:///, else the URL scheme's backend."""
    import importlib

    if not is_url(target) or target.startswith("sqlite:///"):
        return Store
    scheme = target.split("://", 1)[0].lower()
    if scheme not in URL_BACKENDS:
        raise ConfigError(f"store URL scheme {scheme!r} is not supported; use a file path, sqlite:///PATH or "
                          "postgresql://USER@HOST[:PORT]/DATABASE")
    module, _, cls = URL_BACKENDS[scheme].partition(":")
    return getattr(importlib.import_module(module), cls)


def _check_ttl(ttl_s) -> float:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ConfigError(f"claim ttl_s must be a number of seconds > 0, got {ttl_s!r}")
    return float(ttl_s)


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


_COLUMNS = {"meta": ("key", "value"),
            "runs": ("id", "study", "key", "name", "chain", "metrics", "predictions", "machine", "created"),
            "artifacts": ("study", "key", "data"), "claims": ("study", "key", "worker", "expires")}
_JSON_FIELDS = (("chain", list), ("metrics", dict), ("predictions", dict), ("machine", dict))
# the numbers the report and the terminal table compute with: what each must be when present (null is allowed)
_METRICS = {"accuracy": "fraction", "params": "nonneg", "model_bytes": "positive", "flops": "nonneg",
            "macs": "nonneg", "bytes_moved": "nonneg", "latency_p50_s": "positive", "latency_p90_s": "positive",
            "throughput": "positive", "speedup_measured": "positive", "local_pred_s": "positive",
            "peak_mem_bytes": "finite", "batch": "positive",
            "ort_latency_p50_s": "positive", "ort_speedup_measured": "positive", "ort_cosine": "finite"}
_RULES = {"fraction": ("a number in [0, 1]", lambda v: 0 <= v <= 1), "nonneg": ("a number >= 0", lambda v: v >= 0),
          "positive": ("a number > 0", lambda v: v > 0), "finite": ("a finite number", lambda v: True)}


def _kind(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number")


def _check_number(where: str, field: str, v, rule: str) -> None:
    if v is None:
        return
    text, ok = _RULES[rule]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
        raise ConfigError(f"{where}: field {field!r} is {v!r}, expected {text}; fix or delete that row")


def _busy(exc: Exception) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


class Store:
    """`with Store("runs.db") as s: s.put(run); s.runs("default")`.

    Opens only an effml store: a new path becomes one (built beside it and linked into place whole, so no
    other process ever sees a half-made store); an existing file that is anything else (another program's
    SQLite database, an empty file, text) is refused before anything is written to it. `create=False` (for
    `effml report`) refuses a missing path instead of creating it. A `postgresql://` URL opens a PgStore
    (store_pg.py): the same methods on a PostgreSQL server."""

    def __new__(cls, path=None, create: bool = True):
        return super().__new__(_backend(path) if cls is Store else cls)

    def __init__(self, path: str | Path, create: bool = True):
        self.target = str(path)  # what reopen() opens again
        if isinstance(path, str) and path.startswith("sqlite:///"):
            path = path.removeprefix("sqlite:///")
        self.path = Path(path)
        if self.path.is_dir():
            raise ConfigError(f"store {str(self.path)!r} is a directory, not an SQLite file")
        if not self.path.exists():
            if not create:
                raise ConfigError(f"no study store at {str(self.path)!r}: run `effml study --store {self.path}` first")
            self._create()
        self._identify()
        deadline = time.monotonic() + 60.0
        while True:
            self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            try:
                self._setup()
                return
            except ConfigError:
                self.conn.close()
                raise
            except sqlite3.DatabaseError as exc:
                self.conn.close()
                # Switching a file to WAL takes an exclusive lock and does not wait on busy_timeout: two
                # processes opening the same store at once can see "database is locked" (seen in CI). Retry.
                if _busy(exc) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise ConfigError(f"store {str(self.path)!r} is not an effml SQLite store ({exc}); "
                                  "choose another --store path") from None

    def _create(self) -> None:
        """Make a complete, empty store in a private file beside the path, then hard-link it into place: the
        link fails if another process got there first (then that store is used), and never shows a 0-byte or
        half-initialised file under the store's name."""
        parent = self.path.parent
        if not parent.is_dir():
            raise ConfigError(f"store {str(self.path)!r}: directory {str(parent)!r} does not exist; create it first")
        tmp = parent / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.new"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # mode as umask allows
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA + _CLAIMS + ";")
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            finally:
                conn.close()  # the last connection checkpoints and removes the -wal file
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process created it first: open theirs
            except OSError:  # a file system without hard links
                if not self.path.exists():
                    os.replace(tmp, self.path)
        except OSError as e:
            raise ConfigError(f"store {str(self.path)!r} cannot be created ({e.strerror or e}); choose a writable "
                              "--store path") from None
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                if leftover.exists():
                    leftover.unlink()

    def _identify(self) -> None:
        """Refuse, without writing to it, a file that is not an effml store."""
        what = describe_file(self.path)
        if what != "an SQLite database":
            raise ConfigError(f"store {str(self.path)!r} is not an effml SQLite store: it is {what}; effml does not "
                              "turn an existing file into a store: choose another --store path (or delete it)")
        deadline = time.monotonic() + 60.0
        while True:
            conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            try:  # reads only: the application id in the header, the table names
                (app,) = conn.execute("PRAGMA application_id").fetchone()
                tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                           "AND name NOT LIKE 'sqlite_%'"))
                legacy = app == 0 and set(tables) - {"claims"} == {"meta", "runs", "artifacts"} and conn.execute(
                    "SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is not None
                break
            except sqlite3.DatabaseError as exc:
                if _busy(exc) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise ConfigError(f"store {str(self.path)!r} is not an effml SQLite store ({exc}); "
                                  "choose another --store path") from None
            finally:
                conn.close()
        if app == APPLICATION_ID or legacy:  # legacy: made by effml before it set the application id
            return
        held = f"tables {', '.join(tables)}" if tables else "no tables"
        raise ConfigError(f"store {str(self.path)!r} is not an effml SQLite store: it is an SQLite database with "
                          f"{held} (application id {app:#x}); effml writes only into its own stores: choose "
                          "another --store path")

    def _setup(self) -> None:
        self.conn.execute("PRAGMA busy_timeout=60000")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        if self.conn.execute("PRAGMA application_id").fetchone()[0] == 0:  # a store made before the id
            self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self._check_version()
        self.conn.execute(_CLAIMS)  # a store made before claims gets the table
        self._check_columns()

    def _check_columns(self) -> None:
        self._columns_ok({t: {r[1] for r in self.conn.execute(f"PRAGMA table_info({t})")} for t in _COLUMNS})

    def _columns_ok(self, columns: dict[str, set]) -> None:
        """Every column effml reads is there (a hand-edited table is named here, not by a failing query)."""
        for table, cols in _COLUMNS.items():
            have = columns.get(table, set())
            missing = [c for c in cols if c not in have]
            if missing:
                raise ConfigError(f"store {str(self.path)!r}: table {table} has no column(s) {', '.join(missing)} "
                                  "(hand-edited?); use the effml that wrote it, or another --store path")

    def _check_version(self) -> None:
        self._version_ok(self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone())

    def _version_ok(self, row) -> None:
        if row is None:
            raise ConfigError(f"store {str(self.path)!r}: table meta has no 'schema_version' row (hand-edited?); "
                              f"this effml reads schema version {SCHEMA_VERSION}")
        version = row[0]
        if str(version).strip() != str(SCHEMA_VERSION):
            raise ConfigError(f"store {str(self.path)!r}: table meta, row 'schema_version' is {version!r}; this "
                              f"effml reads schema version {SCHEMA_VERSION}: use the effml that wrote it, or "
                              "another --store path")

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def reopen(self) -> "Store":
        """Another connection to this (already checked) store, e.g. for a heartbeat thread. Not Store(path): its
        check reads the file with open()/close(), and closing any descriptor of the file drops every POSIX lock
        this process holds on it, SQLite's too (another process then no longer saw the heartbeat's writes)."""
        other = object.__new__(Store)
        other.target, other.path = self.target, self.path
        other.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        other.conn.execute("PRAGMA busy_timeout=60000")
        return other

    @contextmanager
    def _immediate(self):
        """One write transaction that holds the write lock from its start (so a read inside it stays true)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ---- runs ----------------------------------------------------------------------------------------
    def put(self, run: Run) -> bool:
        """Insert a finished variant; False (and nothing written) if the study already has its key. A run the
        store could not read back (a NaN accuracy, a metric of the wrong type) is refused, naming the field."""
        values = self._checked(run)
        with self._immediate():
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO runs (study, key, name, chain, metrics, predictions, machine, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
            self.conn.execute("DELETE FROM claims WHERE study = ? AND key = ?", (run.study, run.key))
        return cur.rowcount == 1

    def _checked(self, run: Run) -> tuple:
        """The row's values (study, key, name, chain, metrics, predictions, machine, created), read back first."""
        values = (run.study, run.key, run.name, json.dumps(run.chain), json.dumps(run.metrics),
                  json.dumps(run.predictions), json.dumps(run.machine), run.created)
        self._row(("(new)", *values))
        return values

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
        return [self._row(values) for values in self.conn.execute(
            f"SELECT {cols} FROM runs {where} ORDER BY id", params)]

    def _row(self, values: tuple) -> Run:
        """One row of `runs` as a Run, or a ConfigError naming the row and field that is not what effml wrote."""
        id_, study, key, name, *texts, created = values
        where = f"store {str(self.path)!r}, table runs, row id {id_} (variant {name!r})"
        for fname, v in (("study", study), ("key", key), ("name", name)):
            if not isinstance(v, str):
                raise ConfigError(f"{where}: field {fname!r} is {v!r}, not text; fix or delete that row")
        if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
            raise ConfigError(f"{where}: field 'created' is {created!r}, not a time stamp; fix or delete that row")
        parsed = {}
        for (fname, kind), text in zip(_JSON_FIELDS, texts):
            try:
                parsed[fname] = json.loads(text) if isinstance(text, str) else None
            except ValueError as e:
                raise ConfigError(f"{where}: field {fname!r} is not valid JSON ({e}); fix or delete that row") from None
            if not isinstance(parsed[fname], kind):
                raise ConfigError(f"{where}: field {fname!r} holds {_kind(parsed[fname])}, expected a JSON "
                                  f"{'array' if kind is list else 'object'}; fix or delete that row")
        for i, step in enumerate(parsed["chain"]):
            if not isinstance(step, dict) or not isinstance(step.get("technique"), str):
                raise ConfigError(f"{where}: field 'chain', step {i} is {step!r}, expected an object with a "
                                  "'technique' name; fix or delete that row")
        for mname, check in _METRICS.items():
            _check_number(where, f"metrics.{mname}", parsed["metrics"].get(mname), check)
        for dev, pred in parsed["predictions"].items():
            if not isinstance(pred, dict):
                raise ConfigError(f"{where}: field 'predictions.{dev}' holds {_kind(pred)}, expected a JSON object; "
                                  "fix or delete that row")
            for pname in ("latency_s", "energy_j", "usd_per_1m"):
                _check_number(where, f"predictions.{dev}.{pname}", pred.get(pname), "nonneg")
            if pred.get("fits") is not None and not isinstance(pred["fits"], bool):
                raise ConfigError(f"{where}: field 'predictions.{dev}.fits' is {pred['fits']!r}, expected true, "
                                  "false or null; fix or delete that row")
        return Run(study, key, name, parsed["chain"], parsed["metrics"], parsed["predictions"], parsed["machine"],
                   created, id_)

    # ---- artifacts -----------------------------------------------------------------------------------
    def put_artifact(self, study: str, key: str, data: bytes) -> None:
        self.conn.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?)", (study, key, sqlite3.Binary(data)))

    def get_artifact(self, study: str, key: str) -> bytes | None:
        row = self.conn.execute("SELECT data FROM artifacts WHERE study = ? AND key = ?", (study, key)).fetchone()
        return None if row is None else self._artifact(study, key, row)

    def _artifact(self, study: str, key: str, row) -> bytes:
        if not isinstance(row[0], (bytes, memoryview)):
            raise ConfigError(f"store {str(self.path)!r}, table artifacts, key {key!r} (study {study!r}): field 'data' "
                              f"is {type(row[0]).__name__}, not bytes (hand-edited?); delete that row")
        return bytes(row[0])

    # ---- claims: which worker computes which variant ---------------------------------------------------
    def claim(self, study: str, key: str, worker: str, ttl_s: float) -> bool:
        """Claim `key` for `worker` for `ttl_s` seconds: True unless the study already has that run or another
        worker's claim on it has not expired (an expired claim is taken over; the worker's own is renewed)."""
        ttl_s = _check_ttl(ttl_s)
        with self._immediate():  # the checks and the write under one lock: two workers never both win
            now = time.time()
            if self.has(study, key):
                return False
            row = self.conn.execute("SELECT worker, expires FROM claims WHERE study = ? AND key = ?",
                                    (study, key)).fetchone()
            if row is not None and row[0] != worker and row[1] >= now:
                return False
            self.conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)", (study, key, worker, now + ttl_s))
        return True

    def renew(self, study: str, key: str, worker: str, ttl_s: float) -> bool:
        """The heartbeat: push the worker's claim `ttl_s` seconds ahead; False if it no longer holds it."""
        ttl_s = _check_ttl(ttl_s)
        cur = self.conn.execute("UPDATE claims SET expires = ? WHERE study = ? AND key = ? AND worker = ?",
                                (time.time() + ttl_s, study, key, worker))
        return cur.rowcount == 1

    def release(self, study: str, key: str, worker: str) -> None:
        """Give up the worker's claim (it stopped before finishing the variant); another's claim is left alone."""
        self.conn.execute("DELETE FROM claims WHERE study = ? AND key = ? AND worker = ?", (study, key, worker))

    def claims(self, study: str) -> dict[str, tuple[str, float]]:
        """key -> (worker, seconds until the claim expires; < 0: expired) for every claim of the study."""
        now = time.time()
        return {k: (w, e - now) for k, w, e in self.conn.execute(
            "SELECT key, worker, expires FROM claims WHERE study = ? ORDER BY key", (study,))}
