"""A WebSocket's input once its handshake is done: the socket taken over from the handshake,
read without the handshake's buffered file.

``RelayHandler`` (relay.worker.handshake) takes the socket over after the 101 and hands the
``SocketReader`` to the ``Connection``, whose ``FrameReader`` reads from it.
"""

from __future__ import annotations

from typing import Any

_READ_SIZE = 4096  # a socket read after the handshake: client messages are small


class SocketReader:
    """``read(n)`` straight from the socket, for the frames that follow the handshake.

    The handshake's buffered file holds an 8 KB buffer for as long as the connection lives:
    a third of an idle connection's memory (bench idle scenario). This keeps only bytes that
    arrived and were not consumed yet; ``FrameReader`` calls it with ``n`` = what it needs.
    """

    __slots__ = ("_sock", "_pending")

    def __init__(self, sock: Any, pending: bytes = b"") -> None:
        self._sock = sock
        self._pending = pending

    @classmethod
    def take_over(cls, sock: Any, rfile: Any) -> tuple[Any, SocketReader]:
        """Adopt the handshake's socket: a new socket object on the same descriptor, and a
        reader that starts with what ``rfile`` read ahead of the handshake (never waiting).

        The server closes the socket object it accepted once the handshake's greenlet
        returns; the connection outlives that greenlet (it parks), so it keeps its own."""
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            pending = rfile.read1(1 << 16) or b""  # all it buffered (at most 8 KB)
        except OSError:
            pending = b""
        finally:
            sock.settimeout(timeout)
        rfile.close()  # frees its buffer; the socket stays open
        family, kind, proto = sock.family, sock.type, sock.proto
        adopted = type(sock)(family, kind, proto, fileno=sock.detach())
        adopted.settimeout(timeout)
        return adopted, cls(adopted, pending)

    @property
    def pending(self) -> bytes:
        """What was read from the socket and not consumed yet."""
        return self._pending

    def read(self, n: int) -> bytes:
        data = self._pending or self._sock.recv(max(n, _READ_SIZE))
        self._pending = data[n:]
        return data[:n]
