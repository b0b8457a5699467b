"""The one progress hook of the library: `progress(what, fraction)`.

`what` says what is being done ("fine-tune prune-channel-30%", "3/12 trials"), `fraction` in [0, 1] how much of
it is done. Library functions take `progress: Progress | None = None` and call it; the CLI draws the bar.
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str, float], None]


def no_progress(what: str, frac: float) -> None:
    """The hook used when the caller gave none."""
