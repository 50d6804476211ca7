"""One connection's outbound queue and its backpressure policy (centrifuge's writer.go).

Everything a connection sends goes through its ``Writer``, the only code that writes to the
client's socket (trap 3). When nothing is in flight, a frame is first tried with one
non-blocking send, and only what the socket did not take is queued, drained by a writer
greenlet that exists only while there is something to write (spawning one per message was
40% of a worker's CPU, bench steady). The policy is the writer's, the consequence the
connection's: ``enqueue`` returns the close code the connection must close with when the
client lets the queue grow past ``RELAY_QUEUE_MAX_MESSAGES`` or ``RELAY_QUEUE_MAX_BYTES``
(4009, slow consumer), having dropped the queue but for the rest of a frame already begun.
"""

from __future__ import annotations

import socket

import gevent

from relay import closecodes
from relay.closecodes import CloseCode

# An empty queue is this shared tuple, not a list of its own: a list per idle connection was
# one more object for every full garbage collection to walk (bench scale: 17,000 connections
# a worker, collections of 0.7-2 s on a busy machine).
_EMPTY: tuple[bytes, ...] = ()


class Writer:
    # Slots: one writer per connection, and an idle connection's bytes count (bench idle).
    __slots__ = ("_sock", "_raw", "_max_messages", "_max_bytes", "_queue", "_queued_bytes",
                 "_head_partial", "_greenlet")

    def __init__(self, sock: socket.socket, max_messages: int, max_bytes: int) -> None:
        self._sock = sock
        # gevent's socket wraps a non-blocking socket of the standard library, which gevent
        # leaves to "code that needs the raw _sock (not tied to the hub)": a send that must
        # never wait is one, and it spares every delivery the wrapper's Python layers.
        self._raw = getattr(sock, "_sock", sock)
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        # A list, not a deque: it is only appended to and emptied whole, and an empty deque
        # costs 770 bytes against 64 (bench idle, per connection); none at all while empty.
        self._queue: list[bytes] | tuple[bytes, ...] = _EMPTY
        self._queued_bytes = 0
        self._head_partial = False  # the queue's first item is the rest of a begun frame
        self._greenlet: gevent.Greenlet | None = None

    def enqueue(self, frame: bytes) -> CloseCode | None:
        """Send or queue ``frame``; the code to close with if the client is too slow."""
        if self._greenlet is None and not self._queue:
            # ``_send_now``, inline: this is every delivery's path (bench sweep).
            try:
                sent = self._raw.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.abort()
                return None
            if sent == len(frame):
                return None
            if sent:
                self._begun(frame, sent)
                return None
        if (len(self._queue) >= self._max_messages
                or self._queued_bytes + len(frame) > self._max_bytes):
            head = self._queue[0] if self._head_partial and self._queue else None
            self._queue = _EMPTY
            self._queued_bytes = 0
            if head is not None:
                self._queue = [head]
                self._queued_bytes = len(head)
            return closecodes.SLOW_CONSUMER
        self._append(frame)
        return None

    def send_last(self, frame: bytes) -> None:
        """Send the connection's last frame (its close frame) after what is queued, whatever
        the limits."""
        # Sent at once when nothing is in flight: a drain closes thousands of clients a second
        # per worker, and it spawned a writer greenlet for each close frame.
        if self._greenlet is None and not self._queue and self._send_now(frame):
            return
        self._append(frame)

    def _send_now(self, frame: bytes) -> bool:
        """Nothing is in flight: write ``frame`` now, without a writer greenlet; whether the
        caller is done with it (sent, begun and queued, or the socket failed)."""
        # The raw socket is non-blocking: it takes what it can, or raises BlockingIOError;
        # this greenlet cannot be switched out mid-write.
        try:
            sent = self._raw.send(frame)
        except BlockingIOError:
            return False
        except OSError:
            self.abort()
            return True
        if sent == len(frame):
            return True
        if not sent:
            return False
        self._begun(frame, sent)
        return True

    def _begun(self, frame: bytes, sent: int) -> None:
        """The socket took ``sent`` bytes of ``frame``, with nothing queued."""
        # The rest of a frame already begun on the wire: it must go out whole, even if the
        # queue overflows later, or the client's framing would be corrupt.
        self._queue = [frame[sent:]]
        self._queued_bytes += len(frame) - sent
        self._head_partial = True
        self._greenlet = gevent.spawn(self._write_loop)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written: ``wait`` would return at once."""
        return self._greenlet is None and not self._queue

    def wait(self, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, for what is queued to be written."""
        greenlet = self._greenlet
        if greenlet is not None:
            greenlet.join(timeout=timeout)

    def abort(self) -> None:
        """Stop reading and writing at once: the connection's reader sees the end."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _append(self, frame: bytes) -> None:
        if self._queue:
            self._queue.append(frame)  # type: ignore[union-attr]  # not empty: a list
        else:
            self._queue = [frame]
        self._queued_bytes += len(frame)
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._write_loop)

    def _write_loop(self) -> None:
        try:
            while self._queue:
                queue = self._queue
                batch = queue[0] if len(queue) == 1 else b"".join(queue)
                self._queue = _EMPTY
                self._queued_bytes = 0
                self._head_partial = False
                self._sock.sendall(batch)
        except OSError:
            self.abort()
        finally:
            self._greenlet = None
