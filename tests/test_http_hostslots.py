"""Connections per host counted across downloads (the daemon runs several at once)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from support.http_server import Fault, HttpTestServer, payload

from acquired.sources.http import FileRequest, HttpDownload, HttpOptions
from acquired.sources.http.hostslots import HostSlots


def test_slots_are_counted_per_host_and_waited_for() -> None:
    slots = HostSlots(2)
    assert slots.try_take("a") and slots.try_take("a")
    assert not slots.try_take("a")
    assert slots.try_take("b")  # other hosts are not affected
    cancel = threading.Event()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(slots.take("a", cancel)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # waits while the host is full
    slots.release("a")
    waiter.join(5)
    assert got == [True] and slots.used("a") == 2
    cancel.set()
    assert slots.take("a", cancel) is False  # a full host and a cancel: gives up
    slots.set_cap(3)
    assert slots.try_take("a") and slots.full("a")


class PeakSlots(HostSlots):
    """HostSlots that remember the most slots ever taken at once."""

    peak = 0

    def try_take(self, host: str) -> bool:
        ok = super().try_take(host)
        self.peak = max(self.peak, self.used(host))
        return ok

    def take(self, host: str, cancel: threading.Event, poll: float = 0.2) -> bool:
        ok = super().take(host, cancel, poll)
        self.peak = max(self.peak, self.used(host))
        return ok


def test_two_downloads_share_the_cap_of_one_host(tmp_path: Path) -> None:
    blobs = {f"/f{i}.bin": payload(6_000_000, seed=i) for i in range(2)}
    slots = PeakSlots(3)
    with HttpTestServer() as server:
        for path, data in blobs.items():
            server.add(path, data)
            # Slow enough that both downloads want all their connections at once.
            server.fault(path, Fault(rate=2_000_000), times=None)
        results: dict[str, bytes] = {}

        def fetch(path: str) -> None:
            data = blobs[path]
            request = FileRequest(
                urls=[server.url(path)],
                dest=tmp_path / path.strip("/"),
                size=len(data),
                digests={"sha256": hashlib.sha256(data).hexdigest()},
            )
            options = HttpOptions(connections=4, per_host_connections=16, host_slots=slots)
            HttpDownload(request, options).run()
            results[path] = request.dest.read_bytes()

        threads = [threading.Thread(target=fetch, args=(p,)) for p in blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == blobs
        assert slots.peak == 3  # the downloads wanted 8 and got the cap, together
        # The server may still be finishing a response the client has read to the end
        # (the drip sleeps a tick after its last write) when the client's slot is reused:
        # one request of slack. Without the shared slots it sees 6 to 8.
        assert 2 <= server.max_concurrent <= 4
    assert slots.used("127.0.0.1") == 0  # every slot was given back
