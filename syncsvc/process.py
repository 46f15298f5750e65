"""Process-wide tuning applied once a long-running syncsvc process has started."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Move start-up objects out of the collector's way and collect young objects less often.

    Pages of parsed JSON allocate many containers that die young; the default threshold (700)
    runs a generation-0 pass every few resources. Frozen start-up objects are never scanned.
    Measured by ``syncsvc bench``: about a quarter less CPU per stored resource.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
