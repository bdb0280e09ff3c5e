"""A read buffer under paho's socket: one ``recv`` per 64 KiB instead of three per packet.

paho reads each packet with at least three ``recv`` calls (the command byte, the length bytes,
the rest). Each is a system call that releases the GIL, and while the ingest worker holds it
paho then waits for its turn before it can read the next byte: at thousands of messages a second
the network thread spends more time getting the GIL back than parsing. ``BufferedSocket`` reads
whatever the kernel has (up to 64 KiB) and serves paho's small reads from memory.

paho skips its ``select`` while the socket reports ``pending()`` bytes (the hook it has for TLS
sockets), so buffered packets are read at once rather than waiting for the socket to be readable
again. Everything else (send, fileno, close, options) goes to the wrapped socket.
"""

from __future__ import annotations

from typing import Any

CHUNK = 64 * 1024


class BufferedSocket:
    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        available = len(self._buf) - self._pos
        if available <= 0:
            data: bytes = self._sock.recv(max(bufsize, CHUNK))  # may raise BlockingIOError
            if len(data) <= bufsize:
                return data  # b"" (closed) included
            self._buf, self._pos = data, bufsize
            return data[:bufsize]
        start = self._pos
        end = start + min(bufsize, available)
        self._pos = end
        if end == len(self._buf):
            chunk = self._buf[start:end]
            self._buf, self._pos = b"", 0
            return chunk
        return self._buf[start:end]

    def pending(self) -> int:
        """Bytes already read and not yet handed out (plus the TLS layer's, if any)."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    @property
    def wrapped(self) -> Any:
        return self._sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
