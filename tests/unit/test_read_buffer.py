"""The read buffer under paho's socket hands out exactly the bytes the socket delivered."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sensing.read_buffer import BufferedSocket


class ChunkedSocket:
    """Delivers a byte stream in the chunks given, then BlockingIOError (nothing more yet)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.options: list[tuple[int, int, int]] = []

    def recv(self, bufsize: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        head = self.chunks[0]
        self.chunks[0] = head[bufsize:]
        if not self.chunks[0]:
            self.chunks.pop(0)
        return head[:bufsize]

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self.options.append((level, name, value))


@given(chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=20),
       sizes=st.lists(st.integers(1, 200), min_size=1, max_size=50))
def test_small_reads_reassemble_the_stream(chunks: list[bytes], sizes: list[int]) -> None:
    sock = BufferedSocket(ChunkedSocket(chunks))
    got = b""
    i = 0
    while True:
        try:
            piece = sock.recv(sizes[i % len(sizes)])
        except BlockingIOError:
            break
        assert 0 < len(piece) <= sizes[i % len(sizes)]
        got += piece
        i += 1
    assert got == b"".join(chunks)
    assert sock.pending() == 0


def test_pending_counts_what_was_read_ahead() -> None:
    sock = BufferedSocket(ChunkedSocket([b"\x30\x05hello\x30\x02hi"]))
    assert sock.recv(1) == b"\x30"
    assert sock.pending() == 10  # paho then reads on without waiting for select
    assert sock.recv(1) == b"\x05"
    assert sock.recv(5) == b"hello"
    assert sock.recv(100) == b"\x30\x02hi"
    assert sock.pending() == 0


def test_a_closed_socket_still_reads_empty() -> None:
    sock = BufferedSocket(ChunkedSocket([b""]))
    assert sock.recv(1) == b""


def test_other_calls_reach_the_socket() -> None:
    inner = ChunkedSocket([])
    BufferedSocket(inner).setsockopt(6, 1, 1)
    assert inner.options == [(6, 1, 1)]
