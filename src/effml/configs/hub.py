"""Where a `--config` that is not a bundled name comes from: a local model folder or a Hugging Face hub id.

    hub_config_path("HuggingFaceTB/SmolLM2-135M")   # the cached config.json, or a download when online

A hub id is looked up in the local HF cache first (huggingface_hub.try_to_load_from_cache: no network). Only
when it is not cached, and the hub is neither switched off (HF_HUB_OFFLINE=1) nor unreachable, is config.json
downloaded — a few kB, never weights. Reachability is a TCP connect to the endpoint with a short timeout, so an
unplugged machine gets a clear message in seconds instead of a hang.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from effml.errors import ConfigError

CONNECT_TIMEOUT_S = 3.0  # TCP connect to the hub; a reachable hub answers in well under a second
DOWNLOAD_TIMEOUT_S = 10.0  # huggingface_hub's metadata request for config.json
# org/name, each part letters, digits, '-', '_', '.' (the hub's own rule: at most 96 characters per part)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_TRUE = {"1", "on", "yes", "true"}


def looks_like_hub_id(key: str) -> bool:
    """`org/name` and not a path someone meant literally (./x, /x, ~/x, x.json)."""
    return bool(HUB_ID.match(key)) and not key.endswith(".json") and not key.startswith(".")


def model_dir_config(path: Path) -> Path:
    """config.json inside a local model folder; ConfigError naming the folder when it has none."""
    cfg = path / "config.json"
    if not cfg.is_file():
        found = sorted(p.name for p in path.iterdir())[:8] if os.access(path, os.R_OK) else []
        raise ConfigError(f"model folder {str(path)!r} has no config.json (it holds {found or 'nothing readable'}); "
                          "give a Hugging Face model folder, a config.json path or a bundled config name")
    return cfg


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set in the environment now, or when huggingface_hub loaded."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def reachable(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the URL's host opens within timeout_s; otherwise why not."""
    u = urlparse(url)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    if not host:
        return f"HF_ENDPOINT {url!r} has no host"
    result: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result.append(None)
        except OSError as e:  # refused, unresolvable, timed out
            result.append(f"{host}:{port} not reachable within {timeout_s:g} s ({type(e).__name__}: {e})")

    # the DNS lookup inside create_connection ignores the timeout (a dead resolver can stall for tens of
    # seconds): the probe runs in a daemon thread and is abandoned when it overruns
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s + 0.5)
    return result[0] if result else f"{host}:{port} not reachable within {timeout_s:g} s (name lookup hung)"


def cache_dir() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def cached_config(repo_id: str) -> Path | None:
    """The cached config.json of repo_id (main revision), without any network call; None when not cached."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir())
    return Path(hit) if isinstance(hit, str) else None


def hub_config_path(repo_id: str) -> Path:
    """config.json of a hub model: from the local cache, else downloaded when online; else a clear ConfigError."""
    hit = cached_config(repo_id)
    if hit is not None:
        return hit
    where = f"not a local folder and not in the Hugging Face cache ({cache_dir()})"
    if offline():
        raise ConfigError(f"model {repo_id!r} is {where}, and HF_HUB_OFFLINE is set: download it once "
                          f"online (hf download {repo_id} config.json), or pass a local model folder")
    why = reachable(endpoint())
    if why is not None:
        raise ConfigError(f"model {repo_id!r} is {where}, and the hub is unreachable ({why}): "
                          "connect, or pass a local model folder or a config.json path")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, "config.json", cache_dir=cache_dir(), etag_timeout=DOWNLOAD_TIMEOUT_S))
    except GatedRepoError:
        raise ConfigError(f"model {repo_id!r} is gated on the hub: accept its licence and log in (hf auth login), "
                          "or pass a local model folder") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"model {repo_id!r} does not exist on the hub (or is private): check the id") from None
    except EntryNotFoundError:
        raise ConfigError(f"model {repo_id!r} has no config.json on the hub: it is not a transformers model") \
            from None
    except Exception as e:  # network errors from the HTTP client: one line, not a traceback
        raise ConfigError(f"model {repo_id!r}: downloading config.json failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None


__all__ = ["cached_config", "hub_config_path", "looks_like_hub_id", "model_dir_config", "offline", "reachable"]
