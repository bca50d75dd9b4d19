"""``accel: auto``: KVM only where a board really boots with it, probed once per command line per run.

On some hosts /dev/kvm exists but a guest aborts or hangs under KVM, so its presence proves nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence


class AccelChoices:
    """What ``accel: auto`` chose, per command line: the first board that asks runs the probe."""

    def __init__(self) -> None:
        self._chosen: dict[tuple[str, ...], str] = {}
        self._lock = threading.Lock()

    def choose(self, command: Sequence[str], boots_with_kvm: Callable[[], bool]) -> str:
        """``kvm`` if ``/dev/kvm`` is usable and ``boots_with_kvm()`` says a boot worked, else ``tcg``.

        ``command`` (the KVM command line) is the key: boards with the same command line share a probe.
        """
        key = tuple(command)
        with self._lock:
            if key not in self._chosen:
                usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
                self._chosen[key] = "kvm" if usable and boots_with_kvm() else "tcg"
            return self._chosen[key]

    def clear(self) -> None:
        with self._lock:
            self._chosen.clear()


#: The choices of this run (one process): a board on the same command line does not probe again.
ACCEL_CHOICES = AccelChoices()
