"""Fetch the next revisions in background threads while the current one is scored."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, TypeVar

T = TypeVar("T")


class Ready(NamedTuple):
    """One item with what fetching it returned, or the error it raised."""

    item: Any
    fetched: Any = None
    error: Optional[BaseException] = None


def prefetched(items: Iterable[T], fetch: Callable[[T], Any], ahead: int,
               release: Optional[Callable[[Any], None]] = None) -> Iterator[Ready]:
    """Yield every item, in order, once ``fetch(item)`` has finished.

    Up to ``ahead`` items beyond the one being consumed are fetched in ``ahead`` threads; item
    ``i + ahead + 1`` is only submitted once the consumer asks for the next item, i.e. after it
    finished with (and deleted) item ``i``: at most ``ahead + 1`` fetched items exist at once.
    ``ahead=0`` fetches in the caller's thread. If the consumer stops early, fetches already
    finished are handed to ``release`` (e.g. to delete the downloads).
    """
    it = iter(items)
    if ahead == 0:
        for item in it:
            try:
                yield Ready(item, fetch(item))
            except Exception as err:  # recorded per item by the consumer
                yield Ready(item, None, err)
        return
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="prefetch")
    queue: deque[tuple[T, Future]] = deque()

    def submit() -> None:
        item = next(it, None)
        if item is not None:
            queue.append((item, pool.submit(fetch, item)))

    try:
        for _ in range(ahead + 1):
            submit()
        while queue:
            item, future = queue.popleft()
            try:
                yield Ready(item, future.result())
            except Exception as err:
                yield Ready(item, None, err)
            submit()
    finally:  # the consumer stopped early or failed: drop what is queued
        for _, future in queue:
            future.cancel()
        pool.shutdown(wait=True)
        for _, future in queue:
            if release is not None and future.done() and not future.cancelled() and future.exception() is None:
                release(future.result())
