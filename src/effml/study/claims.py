"""Several workers on one study: each variant is computed by one worker, and every worker ends with all of them.

    with Claims(store, "default", ttl_s=120) as claims:
        for key in claims.take(keys):      # the keys this worker claimed, one at a time
            store.put(compute(key))        # put removes the claim

`take` walks the keys in order: a key already in the store is passed over, a key this worker claims is
yielded (a heartbeat thread renews the claim every ttl_s / 4 while the caller computes it, so a long variant
does not expire), a key another live worker holds is put aside. Then it polls the keys put aside until each
is in the store or its claim has expired (a killed worker stops renewing): that key is claimed and yielded
here. So no variant is computed twice while both workers live, and a killed worker's variant is redone by
another within about ttl_s. Leaving the `with` (a budget ran out, an error) releases the held claim.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from effml.study.store import Store, _check_ttl

DEFAULT_TTL_S = 120.0


def worker_id() -> str:
    """host:pid:random, unique per Claims (two studies in one process are two workers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Claims:
    """The claims of one worker on one study (see the module docstring). `poll_s`: how often keys held by
    other workers are looked at again (default ttl_s / 4, at most 5 s)."""

    def __init__(self, store: Store, study: str, ttl_s: float = DEFAULT_TTL_S, poll_s: float | None = None,
                 worker: str | None = None):
        self.store, self.study, self.ttl_s = store, study, _check_ttl(ttl_s)
        self.poll_s = poll_s if poll_s is not None else min(self.ttl_s / 4, 5.0)
        self.worker = worker or worker_id()
        self.held: str | None = None  # the key being computed now
        self.error: BaseException | None = None  # what stopped the heartbeat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> "Claims":
        self._beat = threading.Thread(target=self._heartbeat, name=f"claims-{self.worker}", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self._drop()

    def take(self, keys: Iterable[str], done: Callable[[str], bool] | None = None,
             waiting: Callable[[list[str]], None] | None = None) -> Iterator[str]:
        """Yield each of `keys` that this worker claimed; return once every key is `done` (default: its run is
        in the store) or was yielded. The caller stores the result before asking for the next key. `waiting`
        is told, before each pause, the keys other workers still hold (e.g. for a progress line)."""
        done = done or (lambda key: self.store.has(self.study, key))
        waiting_for = list(keys)
        first = True
        while waiting_for:
            if not first:
                if waiting is not None:
                    waiting(waiting_for)
                time.sleep(self.poll_s)
            first, later = False, []
            for key in waiting_for:
                if done(key):
                    continue
                if not self._claim(key, done):
                    later.append(key)  # another live worker holds it: looked at again after the rest
                    continue
                yield key
                self._drop()
                self._raise_heartbeat_error()
            waiting_for = later

    def _claim(self, key: str, done) -> bool:
        if not self.store.claim(self.study, key, self.worker, self.ttl_s):
            return False
        with self._lock:
            self.held = key
        if done(key):  # finished (e.g. an artifact stored) between the check and the claim
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        """Release the held claim (a no-op when its run was put: put removed it)."""
        with self._lock:
            key, self.held = self.held, None
            if key is not None:
                self.store.release(self.study, key, self.worker)

    def _heartbeat(self) -> None:
        """Renew the held claim every ttl_s / 4, over its own connection (a store is used by one thread)."""
        store = None
        try:
            while not self._stop.wait(self.ttl_s / 4):
                with self._lock:
                    if self.held is None:
                        continue
                    store = store or self.store.reopen()
                    store.renew(self.study, self.held, self.worker, self.ttl_s)
        except BaseException as exc:  # noqa: BLE001 - raised in the worker's thread at its next key
            self.error = exc
        finally:
            if store is not None:
                store.close()

    def _raise_heartbeat_error(self) -> None:
        if self.error is not None:
            raise self.error
