"""Chapter 09: timing done right, and workloads of known duration to test a timer with.

The rules of an honest measurement:

1. **Warm up.** The first calls pay one-off costs (memory allocation, kernel selection,
   caches, lazy initialisation, compilation); run ``warmup`` calls that are not counted.
2. **Synchronise.** A GPU runs work *asynchronously*: a Python call only queues a kernel on
   a stream and returns at once. Stopping the clock before the queue has drained measures
   the launch, not the work. Wait for the device (``torch.cuda.synchronize()``) before
   starting and before stopping the clock, or time on the device itself with CUDA events.
3. **Repeat and report robust statistics.** Time ``repeats`` calls one by one and report
   the median (中位数) and a spread (离散程度), here the interquartile range (IQR, 四分位距):
   a single slow call (the OS scheduling another process, a clock change) moves the mean
   but hardly the median.

Conventions: times are in milliseconds; the median and the quartiles use linear
interpolation between order statistics (``numpy.percentile``'s and ``torch.quantile``'s
default, so the median of an even count is the mean of the two middle values; note that
``torch.median`` returns the *lower* middle value instead).

Workloads for checking a timer: :class:`SleepWorkload` calls take a known, scheduled
duration; on a CPU they sleep, either in the caller's thread (``blocking``) or on a worker
thread that plays the role of a GPU stream (:class:`FakeStream`: the call returns at once and
``sync()`` waits for the queue); on a GPU they spin the device with ``torch.cuda._sleep``
for a calibrated number of clock cycles, launched asynchronously like any kernel.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import torch


def _noop() -> None:
    return None


def default_sync() -> Callable[[], None]:
    """``torch.cuda.synchronize`` when CUDA is available, else a function that does nothing."""
    return torch.cuda.synchronize if torch.cuda.is_available() else _noop


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of ``values`` with linear interpolation (numpy.percentile's default)."""
    s = sorted(float(v) for v in values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(times_ms: list[float]) -> dict:
    """``{"median_ms", "iqr_ms", "times_ms"}`` of a list of times in milliseconds."""
    times = [float(t) for t in times_ms]
    return {"median_ms": quantile(times, 0.5),
            "iqr_ms": quantile(times, 0.75) - quantile(times, 0.25),
            "times_ms": times}


def time_fn(fn: Callable[[], object], warmup: int = 3, repeats: int = 10,
            sync: Callable[[], None] | None = None) -> dict:
    """Time ``fn()`` honestly; the answer to exercise 09.timer.

    Runs ``warmup`` uncounted calls, waits for the device, then times ``repeats`` calls one
    at a time with ``time.perf_counter``, calling ``sync()`` after each call and before
    stopping the clock. ``sync`` defaults to :func:`default_sync`.
    Returns ``{"median_ms": float, "iqr_ms": float, "times_ms": list of repeats floats}``.
    """
    sync = default_sync() if sync is None else sync
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def cuda_event_time_fn(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> dict:
    """Like :func:`time_fn` but timed on the GPU with CUDA events (needs CUDA).

    ``start.record()`` and ``end.record()`` put time stamps into the stream, around the
    kernels ``fn`` queues; ``end.synchronize()`` waits for the second stamp, and
    ``start.elapsed_time(end)`` is the device time between them in milliseconds. CPU-side
    launch overhead that the GPU hides is not counted, idle gaps in the stream are.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA events need a CUDA device")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return summarize(times)


def naive_time_fn(fn: Callable[[], object], repeats: int = 10) -> dict:
    """What NOT to do: no warm-up and no synchronisation (shown in the notebook)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))  # stopped before the work is done
    return summarize(times)


# ---------------------------------------------------------------------------------------
# Workloads of known duration

class FakeStream:
    """A CPU stand-in for a GPU stream: :meth:`submit` queues a sleep of ``ms`` milliseconds
    on a worker thread and returns at once; :meth:`sync` waits until the queue is empty."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ms = self._queue.get()
            try:
                if ms is None:
                    return
                time.sleep(ms / 1e3)
            finally:
                self._queue.task_done()

    def submit(self, ms: float) -> None:
        self._queue.put(float(ms))

    def sync(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self.sync()
        self._queue.put(None)
        self._thread.join(timeout=5)


_CYCLES_PER_MS: float | None = None


def cuda_cycles_per_ms() -> float:
    """GPU clock cycles per millisecond for ``torch.cuda._sleep`` (measured once, cached)."""
    global _CYCLES_PER_MS
    if _CYCLES_PER_MS is None:
        cycles = 20_000_000
        torch.cuda._sleep(cycles // 10)  # wake the clocks up
        torch.cuda.synchronize()
        rates = []
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            rates.append(cycles / start.elapsed_time(end))
        _CYCLES_PER_MS = sorted(rates)[1]
    return _CYCLES_PER_MS


def cuda_sleep(ms: float) -> None:
    """Queue a GPU kernel that spins for about ``ms`` milliseconds; returns at once."""
    torch.cuda._sleep(int(ms * cuda_cycles_per_ms()))


class SleepWorkload:
    """A callable whose i-th call takes ``schedule_ms[i]`` milliseconds (the last entry is
    repeated for later calls); counts its calls in ``self.calls``.

    ``kind="blocking"``: the call returns when its work is done. ``kind="async"``: the call
    only queues the work (on the GPU, or on a :class:`FakeStream` on a CPU) and returns at
    once; ``self.sync`` waits for it (``None`` on a GPU, where a timer's default,
    ``torch.cuda.synchronize``, is the right one). Use as a context manager.
    """

    def __init__(self, schedule_ms: list[float], kind: str = "blocking",
                 device: str | None = None):
        if kind not in ("blocking", "async"):
            raise ValueError("kind must be 'blocking' or 'async'")
        self.schedule = [float(s) for s in schedule_ms]
        self.kind = kind
        self.cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
        self.calls = 0
        self.stream = FakeStream() if (kind == "async" and not self.cuda) else None
        self.sync = self.stream.sync if self.stream is not None else None
        if self.cuda:
            cuda_cycles_per_ms()

    def __call__(self) -> None:
        ms = self.schedule[min(self.calls, len(self.schedule) - 1)]
        self.calls += 1
        if self.cuda:
            cuda_sleep(ms)
            if self.kind == "blocking":
                torch.cuda.synchronize()
        elif self.stream is not None:
            self.stream.submit(ms)
        else:
            time.sleep(ms / 1e3)

    def drain(self) -> None:
        """Wait for any queued work (leaves the device idle for the next measurement)."""
        if self.cuda:
            torch.cuda.synchronize()
        elif self.stream is not None:
            self.stream.sync()

    def close(self) -> None:
        self.drain()
        if self.stream is not None:
            self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
