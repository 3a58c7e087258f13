"""The one batcher: single requests in, one forward pass at a time, what waited runs next.

Ray-free and torch-free. The model deployment's `@serve.batch` admits the requests of the
calls it gathers (`Batcher.admit`); this module alone decides what runs when, owns the batch
settings, records the batches that ran, and says how far behind it is (`Backlog`).

Why a queue of its own: Serve's batcher closes a batch `batch_wait_timeout_s` after its
first request whether or not the device is free, and forms the next one while the previous
one still runs, so under load the passes would be small and run one after another. Here a
pass starts only when the previous one has finished, and takes what waited, oldest first,
up to `max_batch_size`: a lone request goes straight to the device, a busy device still
gets full batches. Before each pass, requests whose caller has gone are dropped, and those
the pass would answer after their deadline are answered `Overloaded` at once.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from img2vec.errors import NotReady, Overloaded
from img2vec.serving.cpus import FORWARD_THREAD, name_this_thread
from img2vec.serving.overload import Backlog

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH_SIZE = 1024
MAX_WAIT_S = 1.0


@dataclass(frozen=True)
class BatchSettings:
    """The live tuning of batching. The names are Serve's own, because they are the keys of
    the Embedder's `user_config` in serve_config.yaml."""

    # The most images one forward pass takes.
    max_batch_size: int = 8
    # How long an idle device waits for a batch to fill before it runs what it has; 0 runs
    # a lone request at once (what waits while a pass runs joins the next pass anyway).
    batch_wait_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        size, wait = self.max_batch_size, self.batch_wait_timeout_s
        if type(size) is not int or not 1 <= size <= MAX_BATCH_SIZE:
            raise ValueError(
                f"max_batch_size must be an integer in 1..{MAX_BATCH_SIZE}, got {size!r}"
            )
        if type(wait) not in (int, float) or not 0 <= wait <= MAX_WAIT_S:
            raise ValueError(f"batch_wait_timeout_s must be in 0..{MAX_WAIT_S} s, got {wait!r}")

    @classmethod
    def from_user_config(cls, config: Mapping[str, Any] | None) -> BatchSettings:
        config = dict(config or {})
        unknown = set(config) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown batch setting(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(f.name for f in fields(cls))}"
            )
        return cls(**config)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pending(NamedTuple, Generic[T]):
    """One request's inputs, to be admitted whole or refused whole, and its deadline (epoch
    seconds, `time.time()`: the caller's clock, so that the time its call spent in queues
    counts; None: no deadline). Inside the batcher the same instant is its job's `due`, on
    this process's monotonic clock."""

    inputs: Sequence[T]
    deadline: float | None


class WarmUp(NamedTuple):
    """What a model's warm-up did: the batch sizes it ran, and the cost of one image in a
    pass of the largest batch (seconds; the batcher's first estimate)."""

    sizes: list[int]
    seconds_per_image: float


class PassObserver(Protocol):
    """Hooks for metrics; called on the event loop."""

    def on_pass(self, size: int, forward_s: float, queue_wait_s: Sequence[float]) -> None: ...

    def on_drop(self, reason: str, count: int) -> None: ...


@dataclass
class BatchStats:
    passes: int = 0
    images: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    forward_s: float = 0.0
    dropped_caller_gone: int = 0
    expired: int = 0
    oom_splits: int = 0
    failed_passes: int = 0
    # Recent pass durations per batch size, and recent queue waits, for medians.
    recent_forward_s: dict[int, deque[float]] = field(default_factory=dict)
    recent_wait_s: deque[float] = field(default_factory=lambda: deque(maxlen=1024))


@dataclass
class _Job(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float  # time.monotonic()
    due: float | None  # time.monotonic() after which it is answered Overloaded unrun


class Batcher(Generic[T, R]):
    """Runs `run(items) -> results` (one result per item, in order) on one worker thread,
    one pass at a time, over whatever was enqueued."""

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        settings: BatchSettings | None = None,
        *,
        is_out_of_memory: Callable[[BaseException], bool] = lambda exc: False,
        observer: PassObserver | None = None,
    ) -> None:
        self._run = run
        self._settings = settings or BatchSettings()
        self._is_oom = is_out_of_memory
        self._observer = observer
        self._queue: deque[_Job[T, R]] = deque()  # one job per input, oldest first
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._in_pass = 0  # images in the pass running now
        # One thread for every forward pass: torch's OpenMP team belongs to the thread that
        # calls it, and a pool of callers would each keep a team of spinning threads.
        self._thread = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="forward",
            initializer=name_this_thread,
            initargs=(FORWARD_THREAD,),
        )
        self._closed = False
        self.stats = BatchStats()
        self._s_per_image: float | None = None  # moving average, for the expected wait

    def reconfigure(self, settings: BatchSettings) -> None:
        """Applies from the next pass on; the pass running now is not disturbed."""
        self._settings = settings
        self._arrived.set()

    def expected_wait_s(self) -> float:
        """How long a request enqueued now would wait for its result, from the recent cost
        per image (0 until a pass has run). Only work that will run counts: requests
        withdrawn or past their deadline are left out even before a pass drops them."""
        if self._s_per_image is None:
            return 0.0
        now = time.monotonic()
        waiting = sum(
            1 for job in self._queue if not job.future.done() and (job.due is None or job.due > now)
        )
        return (waiting + self._in_pass + 1) * self._s_per_image

    def backlog(self) -> Backlog:
        return Backlog(
            self.expected_wait_s(), self.seconds_per_image(), self._settings.max_batch_size
        )

    def enqueue(self, item: T, due: float | None = None) -> asyncio.Future[R]:
        """Queue one item; its future gets its result. Cancel the future to withdraw it.
        `due`: a `time.monotonic()` after which it is answered `Overloaded` unrun."""
        if self._closed:
            raise NotReady("the model replica is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append(_Job(item, future, time.monotonic(), due))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        return future

    def admit(self, requests: Sequence[Pending[T]]) -> list[list[asyncio.Future[R] | Overloaded]]:
        """The one admission step, for requests that arrived together, oldest first: each
        request's inputs go into the queue, or, when the model, behind everything queued
        (those admitted before it here included), would not answer its last input by its
        deadline, every input of it is refused (`Overloaded`, as a value). One backlog
        estimate for them all."""
        backlog = self.backlog()
        now, local_now = time.time(), time.monotonic()
        queued = 0
        admitted: list[list[asyncio.Future[R] | Overloaded]] = []
        for request in requests:
            n = len(request.inputs)
            due = None
            if request.deadline is not None:
                refused = backlog.refusal(request.deadline - now, ahead=queued + max(0, n - 1))
                if refused is not None:
                    admitted.append([refused] * n)
                    continue
                due = local_now + (request.deadline - now)
            admitted.append([self.enqueue(x, due) for x in request.inputs])
            queued += n
        return admitted

    def seconds_per_image(self) -> float:
        """The recent cost of one image in a pass (0 until a pass has run)."""
        return self._s_per_image or 0.0

    def seed(self, per_image_s: float) -> None:
        """The cost of one image measured at warm-up, until a pass measures it: a burst that
        arrives first is then admitted or refused on an estimate, not on nothing."""
        if self._s_per_image is None and per_image_s > 0:
            self._s_per_image = per_image_s

    async def submit(self, items: Iterable[T], due: float | None = None) -> list[R]:
        """Enqueue several items and wait for all their results."""
        futures = [self.enqueue(item, due) for item in items]
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the forward thread, between passes (e.g. a warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def close(self) -> None:
        """Answer everything still queued with `NotReady` and stop the worker thread."""
        self._closed = True
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(NotReady("the model replica is shutting down"))
        self._thread.shutdown(wait=False, cancel_futures=True)

    def snapshot(self) -> dict[str, Any]:
        """The batches that actually ran on this batcher, and the live settings."""
        s = self.stats
        waits = sorted(s.recent_wait_s)
        return {
            "passes": s.passes,
            "images": s.images,
            "batch_size_histogram": {str(k): s.sizes[k] for k in sorted(s.sizes)},
            "max_batch_size_run": max(s.sizes, default=0),
            "forward_seconds": round(s.forward_s, 3),
            "forward_ms_median": {
                str(k): round(1e3 * statistics.median(v), 1)
                for k, v in sorted(s.recent_forward_s.items())
            },
            "queue_wait_ms_p50": round(1e3 * _quantile(waits, 0.5), 1),
            "queue_wait_ms_p99": round(1e3 * _quantile(waits, 0.99), 1),
            "queued": len(self._queue),
            "dropped_caller_gone": s.dropped_caller_gone,
            "expired": s.expired,
            "oom_splits": s.oom_splits,
            "failed_passes": s.failed_passes,
            "config": self._settings.as_dict(),
        }

    # -- the worker ------------------------------------------------------------------

    async def _work(self) -> None:
        while self._queue:
            await self._fill()
            jobs = self._take()
            if jobs:
                await self._pass(jobs)

    async def _fill(self) -> None:
        """With a wait set and fewer than a full batch queued, give the batch until the
        oldest request has waited `batch_wait_timeout_s` to fill."""
        while self._queue:
            settings = self._settings
            remaining = self._queue[0].enqueued + settings.batch_wait_timeout_s
            remaining -= time.monotonic()
            if remaining <= 0 or len(self._queue) >= settings.max_batch_size:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Job[T, R]]:
        jobs: list[_Job[T, R]] = []
        gone = expired = 0
        now = time.monotonic()
        limit = self._settings.max_batch_size
        while self._queue and len(jobs) < limit:
            job = self._queue.popleft()
            if job.future.done():  # cancelled: the caller has gone
                gone += 1
            elif job.due is not None and now > job.due:
                expired += 1
                job.future.set_exception(
                    Overloaded(f"waited {now - job.enqueued:.1f} s for the model; retry later")
                )
            else:
                jobs.append(job)
        # A pass of these takes about len(jobs) x the recent cost of an image, and none of
        # them is answered before it ends: a job whose deadline comes sooner is answered now,
        # not computed for a caller who will have given up (whose timeout would answer it
        # only at the deadline, later).
        if jobs and self._s_per_image:
            this_pass = Backlog(len(jobs) * self._s_per_image, self._s_per_image)
            on_time = []
            for job in jobs:
                late = None if job.due is None else this_pass.refusal(job.due - now)
                if late is None:
                    on_time.append(job)
                else:
                    job.future.set_exception(late)
            expired += len(jobs) - len(on_time)
            jobs = on_time
        self.stats.dropped_caller_gone += gone
        self.stats.expired += expired
        if self._observer is not None:
            if gone:
                self._observer.on_drop("caller_gone", gone)
            if expired:
                self._observer.on_drop("deadline", expired)
        return jobs

    async def _pass(self, jobs: list[_Job[T, R]]) -> None:
        items = [job.item for job in jobs]
        started = time.perf_counter()
        waited = time.monotonic()
        self._in_pass = len(jobs)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._thread, self._run, items
            )
            if len(results) != len(items):
                raise RuntimeError(f"model returned {len(results)} results for {len(items)} items")
        except Exception as exc:
            self.stats.forward_s += time.perf_counter() - started
            if self._is_oom(exc) and len(jobs) > 1:
                # A smaller batch may fit: retry the halves before failing anyone.
                self.stats.oom_splits += 1
                log.warning("out of memory on a batch of %d; retrying it in halves", len(jobs))
                half = (len(jobs) + 1) // 2
                await self._pass(jobs[:half])
                await self._pass(jobs[half:])
                return
            self.stats.failed_passes += 1
            log.error("forward pass of %d failed: %r", len(jobs), exc)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self._in_pass = 0
        took = time.perf_counter() - started
        n = len(jobs)
        s = self.stats
        s.passes += 1
        s.images += n
        s.sizes[n] += 1
        s.forward_s += took
        s.recent_forward_s.setdefault(n, deque(maxlen=256)).append(took)
        waits = [waited - job.enqueued for job in jobs]
        s.recent_wait_s.extend(waits)
        per_image = took / n
        self._s_per_image = (
            per_image if self._s_per_image is None else 0.8 * self._s_per_image + 0.2 * per_image
        )
        if self._observer is not None:
            self._observer.on_pass(n, took, waits)
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]
