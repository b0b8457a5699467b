"""Suite-wide settings, applied before any test module imports torch, and the throwaway PostgreSQL server that
the NAS and study store tests share: initdb into a temp dir, pg_ctl on a free loopback port, stopped (and the
directory removed) at the end. Debian's `postgresql` package provides the binaries (`.ci/run` installs it);
without them the tests that need it are skipped and say why."""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import pytest

# OpenMP threads sleep when idle instead of spinning (what the `effml` CLI sets too): on a shared 2-core CI box
# a spinning runtime makes every parallel op wait for descheduled threads (tiny models ran 25x slower here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models gain
    nothing from a second thread, and on a busy machine each parallel op can wait for a descheduled one."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or ([shutil.which(name)] if shutil.which(name) else [])
    return found[-1] if found else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql; .ci/run does)")
    # psycopg2 is an optional extra (the postgres storage); without it these tests skip and say why
    pytest.importorskip("psycopg2", reason="psycopg2-binary not installed (pip install '.[postgres]')")
    root = tempfile.mkdtemp(prefix="effml_pg_")
    data = os.path.join(root, "data")
    prefix = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's postgres user
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*cmd):
        subprocess.run(prefix + list(cmd), check=True, capture_output=True, timeout=60)

    run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(pg_ctl, "-D", data, "-w", "-l", os.path.join(root, "log"),
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", data, "-w", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_db(postgres_url):
    """A fresh, empty database on the shared server (one per test: no state carried between tests)."""
    import secrets

    import psycopg2

    name = f"t_{secrets.token_hex(4)}"
    conn = psycopg2.connect(postgres_url)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    return postgres_url.rsplit("/", 1)[0] + "/" + name
