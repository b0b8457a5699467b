"""The study store on a PostgreSQL server: `Store("postgresql://user@host:5432/db")`, one study shared by
workers on several machines (`effml study --store postgresql://...`).

The same tables, rows and checks as the SQLite store (store.py: `Run`, the row validation `_row`, the schema
version and column checks). A claim is one atomic statement, INSERT ... ON CONFLICT DO UPDATE ... WHERE the
held claim is the worker's own or has expired, and claims are timed by the server's clock (workers' clocks
may disagree). The tables are checked and made under an advisory lock, so workers starting together on a
new database do not race. Needs the `postgres` extra (SQLAlchemy and psycopg2). A server that cannot be
reached is a ConfigError naming the URL (password masked) and the cause after at most CONNECT_TIMEOUT_S.
"""

from __future__ import annotations

import importlib.util
import re
from contextlib import contextmanager

from effml.errors import ConfigError
from effml.extras import require
from effml.study.store import _COLUMNS, SCHEMA_VERSION, Run, Store, _check_ttl

CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout unless the URL sets one (?connect_timeout=N)
_LOCK = 0x45464D4C  # pg_advisory_xact_lock id held while the tables are checked or made ('EFML')
_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"  # the server's clock, in seconds
_TABLES = ("meta", "runs", "artifacts", "claims")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
        id BIGSERIAL PRIMARY KEY, study TEXT NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL, chain TEXT NOT NULL,
        metrics TEXT NOT NULL, predictions TEXT NOT NULL, machine TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
        UNIQUE (study, key))""",
    "CREATE TABLE IF NOT EXISTS artifacts (study TEXT NOT NULL, key TEXT NOT NULL, data BYTEA NOT NULL, "
    "PRIMARY KEY (study, key))",
    "CREATE TABLE IF NOT EXISTS claims (study TEXT NOT NULL, key TEXT NOT NULL, worker TEXT NOT NULL, "
    "expires DOUBLE PRECISION NOT NULL, PRIMARY KEY (study, key))",
)
_PURPOSE = "a study store on PostgreSQL (--store postgresql://...)"


def driver_url(url: str) -> str:
    """postgresql:// -> postgresql+psycopg2:// unless psycopg 3 is installed (SQLAlchemy 2.1's default
    PostgreSQL driver is psycopg 3; the `postgres` extra installs psycopg2-binary)."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def mask_url(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{creds}{at}{host}"


def _cause(exc: Exception) -> str:
    """The driver's first line (libpq's 'connection ... failed: Connection refused'), not SQLAlchemy's wrapping."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PgStore(Store):
    """`Store("postgresql://...")`: the Store methods (put, has, get, runs, studies, artifacts, claims) on a
    PostgreSQL database. `self.path` is the URL with its password masked (what every message names)."""

    def __init__(self, url: str, create: bool = True):
        self.target, self.path = url, mask_url(url)
        sa = require("sqlalchemy", extra="postgres", what=_PURPOSE)
        full = driver_url(url)
        if full.split("://", 1)[0].endswith("+psycopg2"):
            require("psycopg2", extra="postgres", what=_PURPOSE)
        timeout = {} if re.search(r"[?&]connect_timeout=", url) else {"connect_timeout": CONNECT_TIMEOUT_S}
        try:
            self.engine = sa.create_engine(full, connect_args=timeout, pool_pre_ping=True)
        except (sa.exc.ArgumentError, ValueError) as exc:
            raise ConfigError(f"store {self.path!r} is not a valid database URL ({exc})") from None
        except ImportError as exc:  # a driver named in the URL (postgresql+NAME://) that is not installed
            raise ConfigError(f"store {self.path!r}: driver missing ({exc}); pip install 'effml[postgres]'") from None
        try:
            with self._tx() as c:
                self._prepare(c, create)
        except BaseException:
            self.engine.dispose()
            raise

    @contextmanager
    def _tx(self):
        """One transaction; a server that cannot be reached or refuses is a ConfigError naming the store."""
        from sqlalchemy.exc import DBAPIError

        try:
            with self.engine.begin() as c:
                yield c
        except DBAPIError as exc:
            reach = "cannot reach the PostgreSQL server" if exc.connection_invalidated or \
                type(exc).__name__ in ("OperationalError", "InterfaceError") else "the server refused a query"
            raise ConfigError(f"store {self.path!r}: {reach} ({_cause(exc)}); check the URL, that the server is "
                              "running and accepts this user") from None

    def _q(self, c, sql: str, **params):
        from sqlalchemy import text

        return c.execute(text(sql), params)

    def _prepare(self, c, create: bool) -> None:
        """Check the tables (and make them in a database that has none of them), under the advisory lock."""
        self._q(c, "SELECT pg_advisory_xact_lock(:k)", k=_LOCK)
        have = {r[0] for r in self._q(c, "SELECT table_name FROM information_schema.tables "
                                         "WHERE table_schema = current_schema()")}
        ours = sorted(have & set(_TABLES))
        if not ours:
            if not create:
                raise ConfigError(f"no study store at {self.path!r}: run `effml study --store {self.path}` first")
            for stmt in _SCHEMA:
                self._q(c, stmt)
            self._q(c, "INSERT INTO meta VALUES ('schema_version', :v)", v=str(SCHEMA_VERSION))
        elif "meta" not in have:
            raise ConfigError(f"store {self.path!r} is not an effml store: its database holds table(s) "
                              f"{', '.join(ours)} but no meta table; effml writes only into its own stores: "
                              "choose another database")
        self._version_ok(self._q(c, "SELECT value FROM meta WHERE key = 'schema_version'").first())
        self._q(c, _SCHEMA[-1])  # a store made before claims gets the table
        columns: dict[str, set] = {}
        for table, col in self._q(c, "SELECT table_name, column_name FROM information_schema.columns "
                                     "WHERE table_schema = current_schema()"):
            columns.setdefault(table, set()).add(col)
        self._columns_ok({t: columns.get(t, set()) for t in _COLUMNS})

    def close(self) -> None:
        self.engine.dispose()

    def reopen(self) -> "PgStore":
        return PgStore(self.target, create=False)

    # ---- runs ----------------------------------------------------------------------------------------
    def put(self, run: Run) -> bool:
        names = ("study", "key", "name", "chain", "metrics", "predictions", "machine", "created")
        values = dict(zip(names, self._checked(run)))
        with self._tx() as c:
            cur = self._q(c, f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)}) "
                             "ON CONFLICT (study, key) DO NOTHING", **values)
            self._q(c, "DELETE FROM claims WHERE study = :study AND key = :key", **values)
        return cur.rowcount == 1

    def has(self, study: str, key: str) -> bool:
        with self._tx() as c:
            return self._q(c, "SELECT 1 FROM runs WHERE study = :s AND key = :k", s=study, k=key).first() is not None

    def studies(self) -> list[str]:
        with self._tx() as c:
            return [r[0] for r in self._q(c, "SELECT DISTINCT study FROM runs ORDER BY study")]

    def _select(self, where: str, params: tuple) -> list[Run]:
        """Store's queries (`WHERE study = ?`) with the placeholders named for SQLAlchemy."""
        n = iter(range(len(params)))
        where = re.sub(r"\?", lambda m: f":p{next(n)}", where)
        cols = "id, study, key, name, chain, metrics, predictions, machine, created"
        with self._tx() as c:
            rows = list(self._q(c, f"SELECT {cols} FROM runs {where} ORDER BY id",
                                **{f"p{i}": v for i, v in enumerate(params)}))
        return [self._row(tuple(r)) for r in rows]

    # ---- artifacts -----------------------------------------------------------------------------------
    def put_artifact(self, study: str, key: str, data: bytes) -> None:
        with self._tx() as c:
            self._q(c, "INSERT INTO artifacts VALUES (:s, :k, :d) ON CONFLICT (study, key) DO UPDATE "
                       "SET data = EXCLUDED.data", s=study, k=key, d=bytes(data))

    def get_artifact(self, study: str, key: str) -> bytes | None:
        with self._tx() as c:
            row = self._q(c, "SELECT data FROM artifacts WHERE study = :s AND key = :k", s=study, k=key).first()
        return None if row is None else self._artifact(study, key, row)

    # ---- claims --------------------------------------------------------------------------------------
    def claim(self, study: str, key: str, worker: str, ttl_s: float) -> bool:
        ttl_s = _check_ttl(ttl_s)
        p = dict(s=study, k=key, w=worker, ttl=ttl_s)
        with self._tx() as c:
            won = self._q(c, f"INSERT INTO claims AS c (study, key, worker, expires) "
                             f"SELECT :s, :k, :w, {_NOW} + :ttl "
                             "WHERE NOT EXISTS (SELECT 1 FROM runs WHERE study = :s AND key = :k) "
                             "ON CONFLICT (study, key) DO UPDATE SET worker = EXCLUDED.worker, expires = "
                             f"EXCLUDED.expires WHERE c.worker = EXCLUDED.worker OR c.expires < {_NOW} "
                             "RETURNING worker", **p).first() is not None
            # a run committed while this statement waited on the claim row: this statement's snapshot missed it,
            # a new statement sees it (READ COMMITTED); then the variant is done and the claim is dropped
            if won and self._q(c, "SELECT 1 FROM runs WHERE study = :s AND key = :k", **p).first() is not None:
                self._q(c, "DELETE FROM claims WHERE study = :s AND key = :k AND worker = :w", **p)
                won = False
        return won

    def renew(self, study: str, key: str, worker: str, ttl_s: float) -> bool:
        ttl_s = _check_ttl(ttl_s)
        with self._tx() as c:
            return self._q(c, f"UPDATE claims SET expires = {_NOW} + :ttl WHERE study = :s AND key = :k "
                              "AND worker = :w", s=study, k=key, w=worker, ttl=ttl_s).rowcount == 1

    def release(self, study: str, key: str, worker: str) -> None:
        with self._tx() as c:
            self._q(c, "DELETE FROM claims WHERE study = :s AND key = :k AND worker = :w", s=study, k=key, w=worker)

    def claims(self, study: str) -> dict[str, tuple[str, float]]:
        with self._tx() as c:
            return {k: (w, left) for k, w, left in self._q(
                c, f"SELECT key, worker, expires - {_NOW} FROM claims WHERE study = :s ORDER BY key", s=study)}
