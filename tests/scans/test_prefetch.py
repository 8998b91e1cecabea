"""Prefetch: the next revisions are fetched in the background, bounded, in order."""

import threading
import time

import pytest
from scan_fakes import CATALOG, fake_scan, fake_scores

from circuit_stats.scans.prefetch import prefetched


class Disk:
    """Fetched items on 'disk': fetch adds one, release removes it; remembers the peak."""

    def __init__(self, delay=0.02, fail=()):
        self.on_disk, self.peak, self.delay, self.fail = set(), 0, delay, set(fail)
        self.lock = threading.Lock()
        self.events = []

    def fetch(self, item):
        self.events.append(("fetch-start", item))
        time.sleep(self.delay)
        if item in self.fail:
            raise OSError(f"download of {item} failed")
        with self.lock:
            self.on_disk.add(item)
            self.peak = max(self.peak, len(self.on_disk))
        return item

    def release(self, item):
        with self.lock:
            self.on_disk.discard(item)


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_in_order_and_at_most_ahead_plus_one_on_disk(ahead):
    disk = Disk(fail={4})
    got = []
    for ready in prefetched(range(10), disk.fetch, ahead, disk.release):
        got.append((ready.item, ready.error is not None))
        time.sleep(0.01)  # scoring
        if ready.fetched is not None:
            disk.release(ready.fetched)
    assert got == [(i, i == 4) for i in range(10)]
    assert disk.peak <= ahead + 1 and not disk.on_disk
    if ahead:  # the next fetch starts before the current item is handed over
        assert disk.events.index(("fetch-start", 1)) < 2


def test_stopping_early_releases_what_was_prefetched():
    disk = Disk()
    gen = prefetched(range(10), disk.fetch, 3, disk.release)
    first = next(gen)
    disk.release(first.fetched)
    gen.close()
    assert not disk.on_disk


def test_scan_with_prefetch_and_delete_after_keeps_at_most_n_plus_one(tmp_path):
    disk = Disk()
    score, calls = fake_scores(50, delay=0.01)
    s = fake_scan(tmp_path, score, fetch_fn=disk.fetch, release_fn=disk.release, prefetch=2)
    outcome = s.run(CATALOG[:12])
    assert outcome.ok and calls == [r.revision for r in CATALOG[:12]]
    assert disk.peak <= 3 and not disk.on_disk
