"""Peak resident memory of a block of code, for benchmarks."""

from __future__ import annotations

import threading


class PeakMemory:
    """Peak resident memory of this process, with `children` also of its child processes (Ray's
    when Ray was started here), sampled every 50 ms in the `with` block; `.peak`, `.baseline` in bytes."""

    def __init__(self, children: bool = False):
        import psutil

        self.process = psutil.Process()
        self.children = children
        self.baseline = self.peak = self._rss()

    def _rss(self) -> int:
        total = 0
        for p in [self.process, *(self.process.children(recursive=True) if self.children else [])]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a process that just ended
                pass
        return total

    def __enter__(self):
        self.baseline = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
