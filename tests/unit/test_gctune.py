"""freeze_startup_heap: what start-up leaves is frozen, later garbage is still collected."""

from __future__ import annotations

import gc
import weakref

from relayq_core.gctune import GEN0_THRESHOLD, freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_the_startup_heap_is_frozen_and_later_cycles_are_still_collected() -> None:
    before = gc.get_threshold()
    try:
        frozen = freeze_startup_heap()
        assert frozen > 1000 and gc.get_freeze_count() == frozen
        assert gc.get_threshold()[0] == GEN0_THRESHOLD
        # A reference cycle made after start-up is garbage the collector still finds.
        a, b = Node(), Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        del a, b
        gc.collect()
        assert alive() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
