"""Running an iterator ahead of its consumer in a background thread, a bounded number of items.

The loader's batches are built by numpy (block reads, fancy indexing, casts, broadcasts) and
zarr/numcodecs, which release the GIL while they work, so one producer thread overlaps
building batch k+1 with the model's step on batch k. A thread rather than DataLoader
workers: the batches stay in this process's memory (no pickling of 20 MB tensors through
pipes), and the in-memory feature copy is shared without fork or shared-memory tricks.

Items are produced in order by one thread, so the sequence is exactly the iterator's own;
at most `depth` finished items wait in the queue (memory stays bounded). An exception in the
producer is raised in the consumer at the item where it happened. Closing the consumer (a
`break` out of its loop) stops the producer at its next item.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer went away


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def read_ahead(items: Iterable[T], depth: int = 2, name: str = "fuse-read-ahead") -> Iterator[T]:
    """Yield `items` in order while a background thread produces up to `depth` ahead."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator: run its cleanup here, in the thread that ran it
                close()
        put(_DONE)

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join()
