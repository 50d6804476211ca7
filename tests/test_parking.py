"""An idle WebSocket holds no greenlet: it is parked on a read watcher, and a short-lived
greenlet reads what the client sends (``Connection._read_buffered``). These tests hold a
parked connection to everything an unparked one did: frames split over several writes with
pauses between them (the connection parks at every frame boundary, and a frame's greenlet
waits for its missing bytes), several frames in one write, a close, a reset, a drain, and
the memory an idle connection costs.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.conformance.wire import frame
from tests.support import RelayProcess, notify, raw_connected, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes

TEXT, CLOSE, PING, PONG, CONT = 0x1, 0x8, 0x9, 0xA, 0x0
PAUSE = 0.3  # long enough for the connection to park between two writes
IDLE_CONNECTIONS = 1000


@pytest.fixture(scope="module")
def one_worker(postgres_url: str, schema_installed: list[str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("parking"), workers=1)
    relay.start()
    yield relay
    relay.shut_down()


def test_a_frame_split_over_pauses_is_read_whole(one_worker: RelayProcess) -> None:
    client = raw_connected(one_worker, "park-split")
    try:
        ping = frame(PING, b"split")
        for part in (ping[:1], ping[1:3], ping[3:]):  # header byte, length, mask + payload
            time.sleep(PAUSE)
            client.send(part)
        assert client.read_until(PONG) == b"split"
    finally:
        client.close()


def test_a_message_fragmented_over_pauses_is_one_message(one_worker: RelayProcess) -> None:
    client = raw_connected(one_worker, "park-fragments")
    try:
        token = one_worker.token("park-fragments")
        message = json.dumps({"type": "refresh", "token": token}).encode()
        client.send(frame(TEXT, message[:10], fin=False))
        time.sleep(PAUSE)  # parked between two fragments of one message
        client.send(frame(CONT, message[10:30], fin=False))
        time.sleep(PAUSE)
        client.send(frame(CONT, message[30:]))
        answer = json.loads(client.read_until(TEXT) or b"{}")
        assert answer.get("type") == "token_refreshed"
        time.sleep(PAUSE)
        client.send(frame(CONT, b"x"))  # the fragment state was reset by the final one
        assert client.close_code() == 1002
    finally:
        client.close()


def test_frames_in_one_write_are_all_answered(one_worker: RelayProcess) -> None:
    client = raw_connected(one_worker, "park-pipelined")
    try:
        time.sleep(PAUSE)
        client.send(b"".join(frame(PING, b"%d" % n) for n in range(5)))
        assert [client.read_until(PONG) for _ in range(5)] == [b"%d" % n for n in range(5)]
    finally:
        client.close()


def test_a_parked_connection_is_served_and_closes_cleanly(one_worker: RelayProcess,
                                                          postgres_url: str) -> None:
    client = raw_connected(one_worker, "park-close")
    time.sleep(PAUSE)
    notify(postgres_url, "user_Usage_park-close", '{"n": 1}')
    assert json.loads(client.read_until(TEXT) or b"{}")["data"] == {"n": 1}
    time.sleep(PAUSE)
    client.send(frame(CLOSE, struct.pack("!H", 1000)))
    assert client.close_code() == 1000  # echoed by a parked connection
    client.close()
    wait_for(lambda: "park-close" in one_worker.logs()
             and "closed user=park-close" in one_worker.logs(), 10,
             message="the close to be logged")


def test_a_reset_parked_connection_is_gone(one_worker: RelayProcess) -> None:
    before = one_worker.fresh_health()[1]["totalConnections"]
    client = raw_connected(one_worker, "park-reset")
    wait_for(lambda: one_worker.health()[1]["totalConnections"] == before + 1, 10)
    time.sleep(PAUSE)
    client.reset()
    wait_for(lambda: one_worker.health()[1]["totalConnections"] == before, 10,
             message="the reset connection to be forgotten")
    assert "Traceback" not in one_worker.logs()


def _worker_rss(relay: RelayProcess) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in relay.worker_pids())


def test_an_idle_connection_costs_no_greenlet(one_worker: RelayProcess) -> None:
    """With a greenlet each, 1,000 idle connections cost a worker about 17 KB apiece
    (measured); parked, about 5 KB. The bound sits between the two."""
    warm = [raw_connected(one_worker, f"park-warm-{n}") for n in range(50)]  # first-use allocations
    for client in warm:
        client.close()
    wait_for(lambda: one_worker.health()[1]["totalConnections"] == 0, 10)
    before = _worker_rss(one_worker)
    clients = [raw_connected(one_worker, f"park-idle-{n}") for n in range(IDLE_CONNECTIONS)]
    try:
        wait_for(lambda: one_worker.health()[1]["totalConnections"] == IDLE_CONNECTIONS, 20)
        per_connection = (_worker_rss(one_worker) - before) / IDLE_CONNECTIONS
        assert per_connection < 10 * 1024, f"{per_connection / 1024:.1f} KiB per connection"
    finally:
        for client in clients:
            client.close()
