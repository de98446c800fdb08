"""Extraction input prepared ahead of the model: images and masks read, checked and their
prompts sampled in background threads, handed over in the dataset's order.

On a GPU the encoder would otherwise wait for JPEG/PNG decoding and mask erosion on the
thread that drives it. PIL, OpenCV and numpy release the GIL for that work, so threads
overlap it with the model without copying images between processes. At most `depth` entries
are in flight (a bounded queue: memory stays at `depth` images whatever the dataset size).

What stays on the caller's thread, in order, so that records, resume and skip accounting
are the same with prefetch on or off: the resume check (`skip`, at submission), and what
the caller does with each result (the reader's counting, the model, the writer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

E = TypeVar("E")

SKIPPED = object()  # what prefetch yields for an entry `skip` declined


def prefetch(
    entries: Iterable[E],
    load: Callable[[E], Any],
    *,
    skip: Callable[[E], bool] = lambda e: False,
    workers: int = 0,
    depth: int | None = None,
) -> Iterator[tuple[E, Any]]:
    """Yield (entry, load(entry)) in the order of `entries`, or (entry, SKIPPED) where skip(entry).

    workers = 0 loads on the caller's thread when the item is asked for (no prefetch);
    workers > 0 keeps up to `depth` (default 2 x workers) loads running ahead in a thread
    pool. An exception raised by `load` is raised here, at that entry's turn.
    """
    if workers <= 0:
        for e in entries:
            yield (e, SKIPPED) if skip(e) else (e, load(e))
        return
    depth = max(1, int(depth or 2 * workers))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="usam-prefetch")
    pending: deque[tuple[E, Future | object]] = deque()
    source = iter(entries)
    in_flight = 0

    def top_up() -> None:
        nonlocal in_flight
        while in_flight < depth:
            e = next(source, SKIPPED)
            if e is SKIPPED:
                return
            if skip(e):
                pending.append((e, SKIPPED))
            else:
                pending.append((e, pool.submit(load, e)))
                in_flight += 1

    try:
        top_up()
        while pending:
            e, job = pending.popleft()
            if job is SKIPPED:
                yield e, SKIPPED
                continue
            result = job.result()
            in_flight -= 1
            top_up()
            yield e, result
    finally:  # an error or an early stop: drop what has not started, wait for what has
        pool.shutdown(wait=True, cancel_futures=True)
