"""The spool read by several threads at once, as at end of message.

At end of message spamd streams ``spool.chunks()`` in a pool thread while the
custom body/URI rules ``spool.read()`` the same spool on the libmilter thread.
Each reader must get the whole body, byte for byte, whether the spool is
still in memory or has rolled over to disk.
"""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from milterd.message.model import Spool

BODY = os.urandom(262_144)


def _spool(memory_limit: int) -> Spool:
    spool = Spool(memory_limit)
    for start in range(0, len(BODY), 8192):
        spool.write(BODY[start : start + 8192])
    return spool


@pytest.mark.parametrize("memory_limit", [1 << 20, 4096], ids=["in-memory", "rolled-to-disk"])
def test_concurrent_readers_each_see_the_whole_body(memory_limit: int) -> None:
    spool = _spool(memory_limit)
    expected = hashlib.sha256(BODY).hexdigest()
    results: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def streamer() -> None:
        start.wait()
        for _ in range(20):
            digest, size = hashlib.sha256(), 0
            for chunk in spool.chunks(4096):
                digest.update(chunk)
                size += len(chunk)
            with lock:
                results.append(("chunks", size, digest.hexdigest()))

    def reader() -> None:
        start.wait()
        for _ in range(20):
            data = spool.read()
            head = spool.read(1000)
            with lock:
                results.append(("read", len(data), hashlib.sha256(data).hexdigest()))
                results.append(("head", len(head), hashlib.sha256(head).hexdigest()))

    threads = [threading.Thread(target=streamer) for _ in range(3)] + [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spool.close()
    head = hashlib.sha256(BODY[:1000]).hexdigest()
    wrong = [r for r in results if r != ((r[0], 1000, head) if r[0] == "head" else (r[0], len(BODY), expected))]
    assert len(results) == 180
    assert not wrong, f"{len(wrong)} of {len(results)} reads were not the whole body, e.g. {wrong[0][:2]}"


def test_chunks_stop_at_the_size_when_the_iteration_began() -> None:
    # spamd announces Content-length before streaming: the chunks must add up to it.
    spool = _spool(1 << 20)
    chunks = spool.chunks(65536)
    first = next(chunks)
    spool.write(b"late")
    assert len(first) + sum(len(c) for c in chunks) == len(BODY)
    assert spool.read()[-4:] == b"late" and spool.size == len(BODY) + 4


def test_a_write_after_reads_appends_at_the_end() -> None:
    spool = Spool(16)
    spool.write(b"0123456789")
    assert spool.read(4) == b"0123"
    spool.write(b"abcdefghij")  # rolls over to disk
    assert spool.read() == b"0123456789abcdefghij"
    assert b"".join(spool.chunks(3)) == b"0123456789abcdefghij"

