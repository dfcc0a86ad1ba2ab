"""daphne serving TLS itself (``python -m tts.serve -e ssl:...``): each connection's first
bytes go in small records (tts.tlsrecords), read off the wire of a real server."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl

import pytest

from bench import tls
from scripts.stack import Stack, free_port, port_open, wait_for
from tests.conftest import ARTIFACTS, private_stack_env
from tts import tlsrecords

pytestmark = [pytest.mark.e2e]

# A record's payload plus what TLS 1.3 adds to it: the content type, the AEAD tag, padding.
OVERHEAD = 256


def records_of_a_get(port: int, path: str) -> list[int]:
    """GET ``path`` over TLS and return the length of each record the server sent, read
    from the raw bytes (the handshake's first, plaintext records included)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # a throwaway cert
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_object = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    raw = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:

        def receive() -> bool:
            data = sock.recv(65536)
            raw.extend(data)
            incoming.write(data)
            return bool(data)

        while True:
            try:
                tls_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                assert receive(), "the server closed during the handshake"
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        tls_object.write(request.encode())
        sock.sendall(outgoing.read())
        plain = bytearray()
        while not _whole_response(plain):
            assert receive(), "the server closed before the whole response"
            with contextlib.suppress(ssl.SSLWantReadError):
                while chunk := tls_object.read(65536):
                    plain.extend(chunk)
    lengths, offset = [], 0
    while offset + 5 <= len(raw):
        length = int.from_bytes(raw[offset + 3 : offset + 5], "big")
        lengths.append(length)
        offset += 5 + length
    assert offset == len(raw), "a record cut short"
    return lengths


def _whole_response(plain: bytes) -> bool:
    head, found, body = bytes(plain).partition(b"\r\n\r\n")
    if not found:
        return False
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return len(body) >= length


@pytest.fixture
def daphne(django_db_setup, django_db_blocker):
    """Start a daphne (no workers) with these arguments and settings; stopped after the
    test, a failed start too."""
    stacks: list[Stack] = []

    def start(daphne_args: list[str], **env: str) -> Stack:
        stack = Stack(env=private_stack_env(**env), workers=0, log_dir=ARTIFACTS / "logs-tls")
        stack.daphne_args = daphne_args
        stacks.append(stack)
        with django_db_blocker.unblock():
            return stack.start()

    yield start
    for stack in stacks:
        stack.stop()


@pytest.fixture
def tls_daphne(tmp_path, daphne):
    """Start a daphne serving TLS itself; its TLS port."""

    def start(**env: str) -> int:
        cert, key, _ = tls.make_certificate(tmp_path)
        port = free_port()
        daphne(tls.daphne_endpoint(port, cert, key), **env)
        wait_for(lambda: port_open("127.0.0.1", port), timeout=30, what="daphne's TLS")
        return port

    return start


def test_a_connection_starts_in_small_records_and_sixteen_kb_ones_when_turned_off(tls_daphne):
    path = "/static/tts/player.js"  # over 16 KB, in one write: one record of 16 KB without
    small = records_of_a_get(tls_daphne(), path)
    assert sum(small) > 20_000
    assert max(small) <= tlsrecords.DEFAULT_RECORD_BYTES + OVERHEAD
    whole = records_of_a_get(tls_daphne(TTS_TLS_RECORD_BYTES="0"), path)
    assert max(whole) > 16_000


def test_the_first_bytes_of_a_connection_and_of_an_idle_one_are_cut_small():
    writes: list[bytes] = []
    now = [100.0]
    write = tlsrecords.small_first(lambda _, data: writes.append(data), 4096, clock=lambda: now[0])
    connection = type("Connection", (), {})()
    write(connection, b"a" * 10_000)
    assert [len(w) for w in writes] == [4096, 4096, 1808]
    writes.clear()
    write(connection, b"b" * (tlsrecords.BOOST_BYTES - 10_000 + 5_000))  # crosses the boost
    assert max(len(w) for w in writes[:-1]) == 4096 and len(writes[-1]) == 5_000
    assert b"".join(writes) == b"b" * (tlsrecords.BOOST_BYTES - 5_000)
    writes.clear()
    write(connection, b"c" * 20_000)  # past the boost, and not idle: whole
    assert [len(w) for w in writes] == [20_000]
    writes.clear()
    now[0] += tlsrecords.IDLE_S  # idle: its window starts small again
    write(connection, b"d" * 5_000)
    assert [len(w) for w in writes] == [4096, 904]


def test_a_piece_held_back_holds_the_rest_back_behind_it_in_order():
    """Twisted holds a write back (its _appSendBuffer) while OpenSSL must read first:
    the pieces after it must not overtake it."""

    class Connection:
        def __init__(self) -> None:
            self._appSendBuffer: list[bytes] = []
            self.sent: list[bytes] = []

        def _bufferedWrite(self, data: bytes) -> None:
            self._appSendBuffer.append(data)

    def write(connection: Connection, data: bytes) -> None:
        if not connection.sent:
            connection.sent.append(data)  # the first piece goes out
        else:
            connection._bufferedWrite(data)  # OpenSSL wants to read: held back

    connection = Connection()
    data = bytes(range(256)) * 60  # 15,360 bytes: four pieces of at most 4,096
    tlsrecords.small_first(write, 4096)(connection, data)
    assert [len(piece) for piece in connection.sent] == [4096]
    assert [len(piece) for piece in connection._appSendBuffer] == [4096, 7168]
    assert b"".join(connection.sent + connection._appSendBuffer) == data
    assert connection._tts_tls_sent == 4096  # what was held back counts when written


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 4096), ("0", 0), ("512", 512), ("16384", 16384)]
)
def test_the_record_size_setting(value, expected):
    environ = {} if value is None else {tlsrecords.VARIABLE: value}
    assert tlsrecords.record_bytes(environ) == expected


@pytest.mark.parametrize("value", ["100", "20000", "4k", "-1"])
def test_a_bad_record_size_is_refused_by_name(value):
    with pytest.raises(ValueError, match="TTS_TLS_RECORD_BYTES must be 0 or"):
        tlsrecords.record_bytes({tlsrecords.VARIABLE: value})


def test_tts_serve_refuses_a_bad_record_size_by_name_before_it_serves():
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-m", "tts.serve", "config.asgi:application"],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, tlsrecords.VARIABLE: "4k"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "tts.serve: TTS_TLS_RECORD_BYTES must be 0 or" in done.stderr


@pytest.mark.parametrize(("kind", "buffer"), [("nginx", "4k"), ("nginx", "16k"), ("caddy", "")])
def test_a_proxy_in_front_of_daphne_serves_tls_and_writes_its_own_records(
    tmp_path, daphne, kind, buffer
):
    """bench/proxies.py (`bench/run.py --path-tls-proxy`): nginx as docs/deployment.md
    configures it, or caddy as docker-compose.yml runs it, terminates TLS and proxies to
    daphne on plain http. The records are the proxy's: nginx's at most its proxy buffer
    (4 KB) whatever its ssl_buffer_size, for it relays what it reads (P92); Go's (Caddy's)
    growing past 4 KB within a response of 20 KB."""
    from bench import proxies

    if why := proxies.missing(kind):
        pytest.skip(why)
    cert, key, _ = tls.make_certificate(tmp_path)
    port = free_port()
    stack = daphne(["--proxy-headers"])
    proxy = proxies.start(
        kind,
        tmp_path / kind,
        ARTIFACTS / "logs-tls" / f"{kind}.log",
        port=port,
        upstream=stack.port,
        cert=cert,
        key=key,
        nginx_buffer=buffer or "16k",
    )
    try:
        records = records_of_a_get(port, "/static/tts/player.js")  # over 16 KB
    finally:
        proxies.stop(proxy)
    assert sum(records) > 20_000
    if kind == "nginx":  # proxy_buffer_size: one memory page
        assert max(records) <= max(4096, os.sysconf("SC_PAGE_SIZE")) + OVERHEAD
    else:
        assert 4096 + OVERHEAD < max(records) <= 16384 + OVERHEAD
