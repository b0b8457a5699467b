"""guards: outputs checked before the work (and written whole), memory estimates checked before allocating."""

import os

import pytest

from effml.errors import ConfigError
from effml.guards import (available_ram, check_fits_ram, check_input_fits_ram, check_output_path, describe_file,
                          write_atomic)


def test_a_writable_new_or_html_path_passes_and_nothing_is_created(tmp_path):
    assert check_output_path(tmp_path / "r.html", "--out", suffixes=(".html",)) == tmp_path / "r.html"
    (tmp_path / "old.html").write_text("<p>old</p>")
    check_output_path(tmp_path / "old.html", "--out", suffixes=(".html",))  # a report is rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.html"]  # the probe file is gone
    assert (tmp_path / "old.html").read_text() == "<p>old</p>"


@pytest.mark.parametrize("make,flag,message", [
    (lambda d: d / "missing" / "r.html", "--out", r"directory '.*missing' does not exist"),
    (lambda d: d, "--plot", "is a directory"),
    (lambda d: d / "x" / "r.html", "--out", r"'.*x' is not a directory"),  # x is a file
    (lambda d: d / "notes.html", "--out", r"exists and is a binary file \(3 bytes\): refusing"),
    (lambda d: d / "data.csv", "--out", r"exists and is a text file \(4 bytes\), not a .html/.htm file"),
    (lambda d: d / "store.db", "--out", "exists and is an SQLite database, not a .html/.htm file"),
    (lambda d: d / "empty", "--out", r"exists and is an empty file \(0 bytes\), not a .html/.htm file"),
])
def test_refused_outputs(tmp_path, make, flag, message):
    (tmp_path / "x").write_text("file")
    (tmp_path / "notes.html").write_bytes(b"a\x00b")
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "store.db").write_bytes(b"SQLite format 3\x00" + bytes(84))
    (tmp_path / "empty").touch()
    with pytest.raises(ConfigError, match=f"{flag} .*{message}"):
        check_output_path(make(tmp_path), flag, suffixes=(".html", ".htm"))


def test_same_file_as_an_input_by_any_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs.db").write_bytes(b"SQLite format 3\x00")
    os.symlink("runs.db", tmp_path / "link.db")
    os.link(tmp_path / "runs.db", tmp_path / "hard.db")
    for out in ("runs.db", "./runs.db", str(tmp_path / "runs.db"), "link.db", "hard.db", "sub/../runs.db"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ConfigError, match=f"--out '{out}' is the same file as the input 'runs.db'"):
            check_output_path(out, "--out", not_same_as=["runs.db"])
    with pytest.raises(ConfigError, match="is the same file as the input './new.db'"):  # neither exists yet
        check_output_path("new.db", "--out", not_same_as=["./new.db"])
    check_output_path("other.db", "--out", not_same_as=["runs.db", None, ""])


def test_a_read_only_place_is_refused():
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc on this system")
    with pytest.raises(ConfigError, match=r"--out '/proc/r.html' cannot be written"):  # even for root
        check_output_path("/proc/r.html", "--out")


def test_write_atomic_replaces_whole_and_leaves_nothing_on_failure(tmp_path):
    umask = os.umask(0o022)
    try:
        p = write_atomic(tmp_path / "r.html", "<p>new</p>")
    finally:
        os.umask(umask)
    assert p.read_text() == "<p>new</p>"
    assert p.stat().st_mode & 0o777 == 0o644  # as open() would make it, not mkstemp's 0600
    p.chmod(0o640)
    write_atomic(p, "<p>newer</p>")
    assert p.stat().st_mode & 0o777 == 0o640  # a rewritten report keeps its mode
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere" / "real.html", tmp_path / "link.html")
    write_atomic(tmp_path / "link.html", "<p>through the link</p>")
    assert (tmp_path / "link.html").is_symlink()
    assert (tmp_path / "elsewhere" / "real.html").read_text() == "<p>through the link</p>"
    (tmp_path / "link.html").unlink()
    write_atomic(p, "<p>new</p>")
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "r.html", 42)  # not text: the old file stays
    assert p.read_text() == "<p>new</p>" and sorted(x.name for x in tmp_path.iterdir()) == ["elsewhere", "r.html"]


def test_describe_file(tmp_path):
    (tmp_path / "a").write_text("hello\n")
    assert describe_file(tmp_path / "a") == "a text file (6 bytes)"


def test_memory_checks():
    avail = available_ram()
    assert avail is None or avail > 0
    check_fits_ram(1000, "a kB", available=1000)  # exactly what is there fits
    with pytest.raises(ConfigError, match=r"the weights needs 2 kB, more than the 1 kB of memory available"):
        check_fits_ram(2000, "the weights", available=1000)
    # 10 x 3 x 224 x 224 fp32 = 6,021,120 B
    check_input_fits_ram((10, 3, 224, 224), 4, "--input-shape", device="meta")  # meta allocates nothing
    with pytest.raises(ConfigError, match=r"--batch: an input of shape \(10, 3, 224, 224\) \(1,505,280 elements "
                                          r"x 4 B = 6.02 MB\) needs 6.02 MB"):
        from effml import guards

        real = guards.available_ram
        guards.available_ram = lambda: 6_000_000
        try:
            check_input_fits_ram((10, 3, 224, 224), 4, "--batch")
        finally:
            guards.available_ram = real
