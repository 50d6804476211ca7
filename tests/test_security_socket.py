"""The listener's Unix socket cannot be squatted, hijacked or left behind (security review,
finding 2): by default it lives in a private 0700 directory the master creates and removes;
whatever sits at the path, the listener serves only its own user's processes and a worker
talks only to a listener of its own user (SO_PEERCRED)."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from relay import bus, listener_socket
from tests.support import RelayProcess, wait_for

# Another user's process: run by the system's Python (the test's own may live where that
# user cannot read it), which needs nothing but the standard library here.
OTHER_PYTHON = "/usr/bin/python3"
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not os.access(OTHER_PYTHON, os.X_OK),
                                reason="runs a process as another user, with /usr/bin/python3")


def _nobody() -> dict[str, object]:
    entry = pwd.getpwnam("nobody")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


# ----- in-process -----


def test_the_default_path_is_in_a_fresh_private_directory(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    first, second = listener_socket.private_socket_path(), listener_socket.private_socket_path()
    assert first != second  # not guessable from a pid
    for path in (first, second):
        directory = Path(path).parent
        assert directory.parent == tmp_path and Path(path).name == "listener.sock"
        info = directory.stat()
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
    listener_socket.remove(first, with_directory=True)
    assert not Path(first).parent.exists()


def test_a_stale_socket_of_ours_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "listener.sock")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # bound, never listening: what a killed listener leaves
    listener_socket.claim(path)
    assert not os.path.exists(path)


def test_a_live_listener_is_never_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "listener.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen(1)
        with pytest.raises(listener_socket.SocketPathError, match="another listener"):
            listener_socket.claim(path)
    assert os.path.exists(path)


def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "listener.sock"
    path.write_text("precious")
    with pytest.raises(listener_socket.SocketPathError, match="not a socket"):
        listener_socket.claim(str(path))
    assert path.read_text() == "precious"


@needs_root
def test_another_users_file_at_the_path_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "listener.sock"
    path.write_text("")
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(listener_socket.SocketPathError, match="belongs to uid"):
        listener_socket.claim(str(path))


def test_peer_credentials_name_our_own_process() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert listener_socket.peer(left) == (os.getpid(), os.geteuid())
        assert listener_socket.is_own_user(right)


# ----- a real relay -----


@pytest.mark.slow
def test_default_socket_is_private_and_removed_on_a_clean_exit(
        relay_factory: Callable[..., RelayProcess], tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    relay = relay_factory({"RELAY_SOCKET_PATH": "", "TMPDIR": str(temp)})
    (directory,) = temp.iterdir()
    assert directory.name.startswith("relay-")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_ISSOCK((directory / "listener.sock").stat().st_mode)
    relay.connect("private").close()
    assert relay.stop() == 0
    assert list(temp.iterdir()) == []  # neither the socket nor its directory is left


_IMPOSTOR = """
import socket, sys, threading
path, log = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(16)
received = 0
def serve(conn):
    global received
    while data := conn.recv(65536):
        received += len(data)
        open(log, "w").write(str(received))
open(log, "w").write("0")
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.mark.slow
@needs_root
def test_a_squatted_path_is_refused_and_no_worker_talks_to_the_squatter(
        relay_factory: Callable[..., RelayProcess], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o1777)  # like /tmp: anyone may create a file in it
    path, heard = shared / "relay.sock", shared / "heard"
    squatter = subprocess.Popen([OTHER_PYTHON, "-c", _IMPOSTOR, str(path), str(heard)],
                                **_nobody())  # type: ignore[call-overload]
    try:
        wait_for(lambda: heard.exists(), 10, message="the squatter to listen")
        relay = relay_factory({"RELAY_SOCKET_PATH": str(path)}, wait=False)
        wait_for(lambda: "belongs to uid" in relay.logs(), 20,
                 message="the listener to refuse the squatted path")
        wait_for(lambda: "not talking to it" in relay.logs(), 20,
                 message="a worker to refuse the squatter")
        time.sleep(1)  # the workers keep retrying: they must never send it a byte
        assert heard.read_text() == "0"
        assert relay.health()[0] == 503
        assert "Traceback" not in relay.logs()
    finally:
        squatter.kill()
        squatter.wait()
    path.unlink()
    relay.wait_healthy(30)  # the supervisor's next listener takes the path
    relay.connect("after-squatter").close()


@pytest.mark.slow
@needs_root
def test_the_listener_drops_a_process_of_another_user(
        relay_factory: Callable[..., RelayProcess], tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(directory, 0o755)
    relay = relay_factory({"RELAY_SOCKET_PATH": str(directory / "l.sock")})
    os.chmod(directory / "l.sock", 0o666)  # as if its permissions had been opened up
    request = bus.encode(bus.HELLO, {"pid": 1}) + bus.encode(bus.STATS, {"req": 1})
    # The listener may close before the request is even written (a broken pipe) or after
    # (a reset, or the end of the stream): each is a refusal; any byte of stats is not.
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
             f"try:\n    s.sendall({request!r})\n    print(len(s.recv(65536)))\n"
             "except (BrokenPipeError, ConnectionResetError):\n    print(0)\n")
    result = subprocess.run([OTHER_PYTHON, "-c", probe, str(directory / "l.sock")],
                            capture_output=True, text=True, timeout=30,
                            **_nobody())  # type: ignore[call-overload]
    assert result.stdout.strip() == "0", result.stderr  # closed, not a byte of stats
    assert "serves only relay's own user" in relay.logs()
    assert relay.health()[1]["listener"]["workers"] == 2
