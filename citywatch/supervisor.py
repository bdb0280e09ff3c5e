"""One small supervisor for the engine's worker threads (ingest, outbox).

A worker is a function ``run(stop)`` that loops until ``stop`` is set. If it raises (a bug) or
returns while the service is still running, the supervisor logs it with the traceback, counts a
restart and calls it again after a back-off (0.5 s doubling to 30 s, back to 0.5 s once a run has
lasted a minute), so one bad moment does not end ingest for good and a persistent fault neither
spins the CPU nor floods the log. A worker keeps its own state across restarts (the ingest worker
retries the batch it held). Meanwhile ``GET /api/health`` shows the worker as not alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Target = Callable[[threading.Event], None]


@dataclass
class Worker:
    name: str
    thread: threading.Thread | None = field(default=None, repr=False)
    restarts: int = 0
    running: bool = False  # inside its run function, not dead nor waiting for a restart
    last_error: str | None = None

    @property
    def alive(self) -> bool:
        return self.running and self.thread is not None and self.thread.is_alive()


class Supervisor:
    def __init__(self, stop: threading.Event, *,
                 on_change: Callable[[Worker], None] | None = None,
                 backoff_s: tuple[float, float] = (0.5, 30.0), healthy_after_s: float = 60.0,
                 thread_prefix: str = "citywatch-") -> None:
        self._stop = stop
        self._on_change = on_change
        self._backoff = backoff_s
        self._healthy_after_s = healthy_after_s
        self._prefix = thread_prefix
        self.workers: dict[str, Worker] = {}

    def spawn(self, name: str, target: Target) -> Worker:
        if name in self.workers:
            raise ValueError(f"worker {name!r} already exists")
        worker = self.workers[name] = Worker(name)
        worker.thread = threading.Thread(target=self._keep_running, args=(worker, target),
                                         name=f"{self._prefix}{name}", daemon=True)
        worker.thread.start()
        return worker

    def _keep_running(self, worker: Worker, target: Target) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            started = time.monotonic()
            self._set(worker, running=True)
            try:
                target(self._stop)
            except Exception as exc:
                worker.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("worker %s failed (%s); restarting in %.1f s", worker.name,
                              worker.last_error, delay)
            else:
                if self._stop.is_set():
                    break
                worker.last_error = "returned while the service was running"
                log.error("worker %s stopped by itself; restarting in %.1f s", worker.name, delay)
            finally:
                self._set(worker, running=False)
            worker.restarts += 1
            if time.monotonic() - started >= self._healthy_after_s:
                delay = self._backoff[0]
            self._notify(worker)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self._backoff[1])

    def _set(self, worker: Worker, *, running: bool) -> None:
        worker.running = running
        self._notify(worker)

    def _notify(self, worker: Worker) -> None:
        if self._on_change is not None:
            try:
                self._on_change(worker)
            except Exception:  # a metrics hiccup must not take the worker down with it
                log.exception("supervisor: on_change failed for %s", worker.name)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for w in self.workers.values():
            if w.thread is not None:
                w.thread.join(max(deadline - time.monotonic(), 0.0))
