"""Checks run before any long work: will the output be writable, will the input fit in memory.

    check_output_path(args.out, "--out", suffixes=(".html",), not_same_as=[args.store])
    check_fits_ram(n_params * 4, "the fp32 weights of llama-2-70b")

Both raise ConfigError naming the flag (or the thing being built) and what to do, so a run that would end by
failing to write its result, overwriting its own input, or being OOM-killed is refused before it starts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from effml.errors import ConfigError

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file (sqlite.org/fileformat)


def describe_file(path: Path) -> str:
    """What an existing file looks like, for messages: 'an empty file (0 bytes)', 'an SQLite database', ..."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"an unreadable file ({e.strerror})"
    if size == 0:
        return "an empty file (0 bytes)"
    if head.startswith(SQLITE_MAGIC):
        return "an SQLite database"
    if b"\x00" in head:
        return f"a binary file ({size:,} bytes)"
    return f"a text file ({size:,} bytes)"


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # hard links, symlinks, relative paths
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: str | os.PathLike, flag: str, *, suffixes: Iterable[str] | None = None,
                      not_same_as: Iterable[str | os.PathLike | None] = ()) -> Path:
    """`path` can be written as the output of `flag`: refused when its directory is missing or not writable,
    when it is a directory, when it is the same file as one of `not_same_as` (the inputs: through a symlink, a
    hard link or another relative spelling too), or when it exists and is not of the kind written here (its
    suffix is not one of `suffixes`, or it is an SQLite database or a binary file). Creates nothing; returns
    the path."""
    if path is None or str(path) == "":
        raise ConfigError(f"{flag} needs a file path")
    p = Path(path).expanduser()
    for other in not_same_as:
        if other is not None and str(other) != "" and _same(p, Path(other).expanduser()):
            raise ConfigError(f"{flag} {str(path)!r} is the same file as the input {str(other)!r}: writing it "
                              "would destroy that input; choose another output path")
    if p.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a directory; give a file path inside it")
    parent = p.parent
    if not parent.exists():
        raise ConfigError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist; create it first")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {str(path)!r}: {str(parent)!r} is not a directory")
    exists = p.exists() or p.is_symlink()
    if exists:
        if not p.is_file():
            raise ConfigError(f"{flag} {str(path)!r} exists and is not a regular file; choose another path")
        kinds = tuple(s.lower() for s in suffixes) if suffixes else None
        what = describe_file(p)
        if kinds and p.suffix.lower() not in kinds:
            raise ConfigError(f"{flag} {str(path)!r} exists and is {what}, not a {'/'.join(kinds)} file: "
                              "refusing to overwrite it; choose another path or delete it")
        if what.startswith(("an SQLite", "a binary", "an unreadable")):
            raise ConfigError(f"{flag} {str(path)!r} exists and is {what}: refusing to overwrite it; choose "
                              "another path or delete it")
    _check_writable(p, parent, exists, flag, str(path))
    return p


def _check_writable(p: Path, parent: Path, exists: bool, flag: str, shown: str) -> None:
    """Try it: os.access says yes to root on a read-only mount, and no to nothing it cannot see."""
    try:
        if exists:
            with open(p, "ab"):  # appends nothing: neither contents nor mtime change
                pass
        # the result is written beside the output and renamed onto it, so the directory must take a new file
        fd, tmp = tempfile.mkstemp(prefix=".effml-check-", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        where = shown if exists else f"directory {str(parent)!r}"
        raise ConfigError(f"{flag} {shown!r} cannot be written ({where}: {e.strerror or e}); choose a writable "
                          "path") from None


def write_atomic(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write `data` to a temporary file beside `path`, then rename it onto `path`: a reader (or a crash) never
    sees half a file, and a failure leaves the old file as it was."""
    p = Path(path)
    p = p.resolve() if p.is_symlink() else p  # a link to a report elsewhere: that report is rewritten
    raw = data.encode(encoding) if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        if p.exists():  # the mode it had; else what a plain open() would give (mkstemp makes it 0600)
            mode = p.stat().st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


# ---- memory -----------------------------------------------------------------------------------------------

def available_ram() -> int | None:
    """Bytes of memory available to a new allocation: MemAvailable from /proc/meminfo (the kernel's estimate of
    what can be allocated without swapping, Linux >= 3.14); else free physical pages; None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file says kB and means KiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_ram(nbytes: float, what: str, available: int | None = None) -> None:
    """Refuse to allocate `nbytes` for `what` (e.g. "the fp32 weights of llama-2-70b (69.0 G params x 4 B)")
    when it exceeds the memory available now; `available` overrides the measured value (tests)."""
    from effml.units import fmt_bytes

    if nbytes < 0:
        raise ConfigError(f"{what}: a negative size ({nbytes}) cannot be allocated")
    avail = available_ram() if available is None else available
    if avail is not None and nbytes > avail:
        raise ConfigError(f"{what} needs {fmt_bytes(nbytes)}, more than the {fmt_bytes(avail)} of memory available "
                          "on this machine (MemAvailable): refused before allocating; use a smaller model, batch, "
                          "sequence or dtype, or a machine with more memory")


def module_bytes(model) -> int:
    """Bytes of a module's parameters and buffers (works on meta: shapes only)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def check_config_fits_ram(config, batch: int, seq: int | None, dtype: str, device: str = "cpu") -> None:
    """Before building a model config with real weights: its parameters and buffers (counted on the meta
    device, in `dtype`), its example inputs and, for a causal LM, the logits every forward returns (batch x seq
    x vocab in `dtype`: 105 GB for GPT-2 at batch 512, seq 1024) must fit in the memory available now. Other
    activations are not counted: this is a lower bound."""
    from effml import configs
    from effml.units import fmt_bytes, si

    if str(device) == "meta":
        return
    meta = configs.build(config, dtype=dtype, device="meta")
    weights = module_bytes(meta)
    n = sum(p.numel() for p in meta.parameters())
    args, kwargs = configs.example_inputs(config, batch=batch, seq=seq, device="meta", dtype=dtype)
    inputs = sum(t.numel() * t.element_size() for t in (*args, *kwargs.values()) if hasattr(t, "element_size"))
    logits, vocab = 0, getattr(getattr(meta, "config", None), "vocab_size", None)
    if config.task == "causal-lm" and args and vocab:
        b, t = args[0].shape  # the token ids (B, T)
        logits = b * t * vocab * next(meta.parameters()).element_size()
    check_fits_ram(weights + inputs + logits, f"building {config.name!r} with real weights in {dtype} "
                   f"({si(n)} params = {fmt_bytes(weights)}, inputs {fmt_bytes(inputs)}"
                   + (f", logits {fmt_bytes(logits)})" if logits else ")"))


def check_build_fits_ram(build, kwargs: dict, what: str) -> None:
    """Before building a zoo model with real weights (its constructor arguments from --set, --seq): build it on the
    meta device first (shapes only, no memory) and check its parameters and buffers. A user's own callable is not
    pre-built (it may not run on meta, or may load weights); nor is anything that fails on meta (the real build
    reports it)."""
    import torch

    from effml.units import fmt_bytes

    if getattr(build, "zoo_entry", None) is None:
        return
    try:
        with torch.device("meta"):
            model = build(**kwargs)
    except Exception:
        return
    if isinstance(model, torch.nn.Module):
        n = module_bytes(model)
        check_fits_ram(n, f"{what}: its weights ({fmt_bytes(n)} as built with {kwargs or 'its defaults'})")


def check_input_fits_ram(shape: tuple[int, ...], elem_bytes: int, flag: str, device: str = "cpu") -> None:
    """Before allocating an example input of `shape` (from `flag`, e.g. --input-shape or --batch)."""
    from effml.units import fmt_bytes

    if str(device) == "meta":
        return
    n = 1
    for d in shape:
        n *= int(d)
    check_fits_ram(n * elem_bytes, f"{flag}: an input of shape {tuple(shape)} ({n:,} elements x {elem_bytes} B = "
                                   f"{fmt_bytes(n * elem_bytes)})")


__all__ = ["SQLITE_MAGIC", "available_ram", "check_build_fits_ram", "check_config_fits_ram", "check_fits_ram",
           "check_input_fits_ram", "check_output_path", "describe_file", "module_bytes", "write_atomic"]
