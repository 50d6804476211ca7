"""Where the listener's Unix socket lives, and who may talk over it.

The gunicorn master chooses the path once, before it starts anything: by default a socket in
a directory of its own, created 0700 under an unguessable name (``private_socket_path``), so
that no other local user can pre-create, squat or reach it; ``RELAY_SOCKET_PATH`` overrides.
The master removes the socket and that directory on a clean exit (``remove``).

Whatever sits at the path, both ends check the peer's credentials (``SO_PEERCRED``): the
listener serves only processes of its own user, and a worker talks only to a listener of its
own user. Whoever is on the other end of this socket reads every user id and cursor and can
send any user updates.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import tempfile

SOCKET_NAME = "listener.sock"
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class SocketPathError(RuntimeError):
    """The listener cannot take its socket path; the message says what is there."""


def private_socket_path() -> str:
    """A new socket path in a fresh 0700 directory of this user's under the temp directory."""
    return os.path.join(tempfile.mkdtemp(prefix="relay-"), SOCKET_NAME)


def remove(path: str, with_directory: bool) -> None:
    """Remove the socket file, and its directory if relay created it (and it is empty)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    if with_directory:
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass  # gone already, or something else was put in it: leave that alone


def peer(sock: socket.socket) -> tuple[int, int]:
    """``(pid, uid)`` of the process at the other end of a connected Unix socket."""
    pid, uid, _gid = _CREDENTIALS.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
    return pid, uid


def is_own_user(sock: socket.socket) -> bool:
    return peer(sock)[1] == os.geteuid()


def claim(path: str) -> None:
    """Make ``path`` free for the listener to bind.

    A stale socket of this user's (a listener that was killed) is removed. Anything else is
    refused with a ``SocketPathError`` naming what is there: another user's file (squatted),
    something that is not a socket, or a socket another listener still answers on."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if info.st_uid != os.geteuid():
        raise SocketPathError(
            f"{path} belongs to uid {info.st_uid}, not to relay's user {os.geteuid()} "
            f"(another local user may be squatting it): leave RELAY_SOCKET_PATH unset for a "
            f"private directory, or choose a path in a directory only relay's user can write")
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            pass  # nobody answers: a stale socket
        else:
            raise SocketPathError(f"another listener is serving on {path}")
    os.unlink(path)
