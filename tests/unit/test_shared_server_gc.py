"""A service moves its startup objects out of the cyclic collector's reach once it
serves, after collecting the garbage startup left."""

from __future__ import annotations

import gc
import weakref

from services.shared.server import freeze_startup_objects


class _Cycle:
    me: object


def test_startup_objects_are_frozen_and_startup_garbage_is_not() -> None:
    gc.unfreeze()
    try:
        garbage = _Cycle()
        garbage.me = garbage
        gone = weakref.ref(garbage)
        del garbage
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        # Frozen objects are never freed: the cycle must have been collected first.
        assert gone() is None
    finally:
        gc.unfreeze()
