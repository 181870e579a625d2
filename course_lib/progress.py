"""Progress bars for the course's long steps (calibration sweeps, compilation, key generation).

One rule for every bar: it shows in a live notebook or terminal, and it is hidden when the caller
passes ``show=False`` or when ``TQDM_DISABLE`` is set. ``make test`` and ``make notebooks`` set
that variable, so that the committed notebooks and nbval's runs carry no progress widget, whose
model id and timings would change at every run; the steps still print their time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tqdm.auto import tqdm


def bars_disabled() -> bool:
    """True when ``TQDM_DISABLE`` asks for no progress bars (1, true or yes)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in {"1", "true", "yes"}


def progress_bar(iterable: Iterable | None = None, *, show: bool = True, **kwargs) -> tqdm:
    """A ``tqdm.auto`` bar over ``iterable`` (or a manual one), hidden unless ``show`` and bars are enabled."""
    return tqdm(iterable, disable=not show or bars_disabled(), **kwargs)
