"""The socket consumer through the real ASGI application and the real Redis layer."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid

import pytest
import pytest_asyncio
from channels import DEFAULT_CHANNEL_LAYER
from channels.db import database_sync_to_async as sync_to_async  # closes its connections
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator

from config.asgi import application
from tests.conftest import store_first_chunks
from tts import broadcast, generation, services
from tts.audio import FIRST_PART_BYTES, pcm_parts
from tts.services import Owner

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.usefixtures("settled_tasks"),
]

HEADERS = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
TEXT = "First sentence here. Second sentence follows. The third one ends it."


@pytest_asyncio.fixture
async def settled_tasks():
    """End every task a test left running (a consumer still blocked on the channel layer)
    before the loop closes. A Redis read can absorb one cancellation and go on blocking, so
    cancel again until each has ended; the loop's own teardown cancels only once and would
    then wait forever."""
    yield
    me = asyncio.current_task()
    try:
        for _ in range(20):
            left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not left:
                return
            for task in left:
                task.cancel()
            await asyncio.wait(left, timeout=0.5)
        pytest.fail(f"tasks would not end: {left}")
    finally:
        # The next test runs on another event loop: give it a layer of its own. The shared
        # one keeps receive state bound to this loop (a lock a cancelled read may still
        # hold), which made a later test's consumer fail with "bound to a different loop".
        channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)


def communicator(
    session_id,
    after: object = None,
    *,
    pending: object = None,
    parts: object = None,
    cookie: str | None = None,
) -> WebsocketCommunicator:
    """A socket on the session; ``after``/``pending``/``parts``: query values; ``cookie``: a
    sessionid cookie to send."""
    params = {"after": after, "pending": pending, "parts": parts}
    query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
    headers = HEADERS + ([(b"cookie", f"sessionid={cookie}".encode())] if cookie else [])
    path = f"/ws/tts/{session_id}/" + (f"?{query}" if query else "")
    return WebsocketCommunicator(application, path, headers=headers)


@sync_to_async
def signed_in(name: str) -> tuple[int, str]:
    """A new user's id and the sessionid cookie of a browser signed in as them."""
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.create_user(name)
    client = Client()
    client.force_login(user)
    return user.pk, client.cookies["sessionid"].value


@sync_to_async
def make_session(text: str = TEXT, *, run: bool = True, staff: bool = True, session_id=None):
    owner = Owner(user_id=None, session_key="", is_staff=staff)
    session = services.session_create(text=text, owner=owner, dispatch=False, session_id=session_id)
    if run:
        services.session_run(session_id=session.id, worker="test")
    return session


async def receive_until_closed(comm: WebsocketCommunicator) -> tuple[list[dict], list[bytes]]:
    frames, audio = [], []
    while True:
        message = await comm.receive_output(timeout=10)
        if message["type"] == "websocket.close":
            return frames, audio
        if message.get("bytes") is not None:
            audio.append(message["bytes"])
        else:
            frames.append(json.loads(message["text"]))


def as_staff(comm: WebsocketCommunicator) -> WebsocketCommunicator:
    from django.contrib.auth.models import AnonymousUser

    staff = type("Staff", (AnonymousUser,), {"is_authenticated": True, "is_staff": True, "pk": 0})
    comm.scope["user"] = staff()
    return comm


async def test_an_unknown_session_closes_with_4404():
    comm = communicator(uuid.uuid4())
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4404}


async def test_a_stranger_is_closed_with_4403():
    session = await make_session(run=False, staff=False)
    comm = communicator(session.id)
    await comm.connect()
    assert (await comm.receive_output(timeout=5))["code"] == 4403


async def test_a_stranger_cannot_cancel_while_the_access_check_runs():
    """cancel sent the moment the handshake completes, before the 4403."""
    session = await make_session(run=False, staff=False)
    comm = communicator(session.id)
    await comm.connect()
    await comm.send_json_to({"type": "cancel"})
    assert (await comm.receive_output(timeout=5))["code"] == 4403
    await comm.wait(timeout=2)
    await sync_to_async(session.refresh_from_db)()
    assert session.status == "queued"


async def test_a_signed_in_owner_listens_and_another_user_is_refused():
    """Through the real cookie, session and (lazy) auth middleware."""
    owner_id, owner_cookie = await signed_in("owner")
    _, other_cookie = await signed_in("other")
    session = await sync_to_async(services.session_create)(
        text=TEXT, owner=Owner(user_id=owner_id), dispatch=False
    )

    async def first_message(cookie: str) -> dict:
        comm = communicator(session.id, cookie=cookie)
        await comm.connect()
        message = await comm.receive_output(timeout=5)
        await comm.disconnect()
        return message

    assert json.loads((await first_message(owner_cookie))["text"])["type"] == "session"
    assert (await first_message(other_cookie)) == {"type": "websocket.close", "code": 4403}


async def test_a_late_client_gets_every_stored_chunk_then_done():
    session = await make_session()
    frames, audio = await receive_until_closed(await _connected(as_staff(communicator(session.id))))
    assert frames[0]["type"] == "session" and frames[0]["format"] == "pcm_s16le"
    chunk_frames = [f for f in frames if f["type"] == "chunk"]
    assert [f["seq"] for f in chunk_frames] == list(range(frames[0]["total_chunks"]))
    assert [struct.unpack("<I", a[:4])[0] for a in audio] == [f["seq"] for f in chunk_frames]
    assert frames[-1]["type"] == "done"
    stored = await sync_to_async(
        lambda: [bytes(c.audio.pcm) for c in session.chunks.order_by("seq")]
    )()
    assert [a[4:] for a in audio] == stored
    assert not any("cushion_ms" in f for f in chunk_frames)  # all in hand: nothing to hold


async def test_the_done_frame_names_the_audio_under_the_servers_root_path(settings):
    """Served under a root path (daphne --root-path, SCRIPT_NAME), or FORCE_SCRIPT_NAME, a
    request's URLs begin with it, and so does the `done` frame's audio_url."""
    session = await make_session()
    for root, forced, prefix in [("/narrator", None, "/narrator"), ("", "/site/", "/site")]:
        settings.FORCE_SCRIPT_NAME = forced
        comm = as_staff(communicator(session.id))
        comm.scope["root_path"] = root  # and the path begins with it, as ASGI has it
        comm.scope["path"] = root + comm.scope["path"]
        frames, _ = await receive_until_closed(await _connected(comm))
        assert frames[-1]["audio_url"] == f"{prefix}/api/tts/sessions/{session.id}/audio.wav"


async def test_a_late_client_of_a_running_session_gets_what_is_left_of_each_hold():
    """Stored chunks read back while the worker still works carry their live hold less
    their age (tts.pacing.cushion_left): a listener who joins late, or resumes, starts no
    sooner than one who got them live."""
    from tests.conftest import hold_left_bounds, store_held_chunks

    session = await make_session(run=False)
    made = await sync_to_async(store_held_chunks)(session.id, [4000, 2000], age_ms=800)
    broadcast.flush()
    comm = await _connected(as_staff(communicator(session.id)))
    held = []
    while len(held) < 2:
        frame = await comm.receive_output(timeout=5)
        if frame.get("text") and json.loads(frame["text"])["type"] == "chunk":
            held.append(json.loads(frame["text"])["cushion_ms"])
    for left, hold in zip(held, [4000, 2000], strict=True):
        low, high = hold_left_bounds(hold, made, 800)
        assert low <= left <= high
    await comm.disconnect()


async def test_after_skips_what_the_client_already_has():
    session = await make_session()
    frames, audio = await receive_until_closed(
        await _connected(as_staff(communicator(session.id, after=0)))
    )
    assert [f["seq"] for f in frames if f["type"] == "chunk"][0] == 1


async def stored_pcm(session) -> list[bytes]:
    return await sync_to_async(
        lambda: [bytes(c.audio.pcm) for c in session.chunks.order_by("seq")]
    )()


def chunks_in_parts(frames: list[dict], audio: list[bytes]) -> dict[int, list[bytes]]:
    """seq -> the PCM of each binary frame of that chunk, checking that each chunk frame's
    `parts` binary frames follow it, all of its seq (the order of text and binary frames is
    not kept by receive_until_closed, so by count: every chunk frame says how many)."""
    parts: dict[int, list[bytes]] = {}
    frames_left = list(audio)
    for frame in (f for f in frames if f["type"] == "chunk"):
        taken, frames_left = frames_left[: frame["parts"]], frames_left[frame["parts"] :]
        assert [struct.unpack("<I", a[:4])[0] for a in taken] == [frame["seq"]] * frame["parts"]
        parts[frame["seq"]] = [a[4:] for a in taken]
    assert not frames_left
    return parts


async def test_a_parts_socket_gets_each_live_chunk_in_growing_parts_of_the_same_audio():
    """?parts=1: each chunk's PCM comes as `parts` binary frames, the first within a fresh
    connection's first TCP window, each next twice the one before (the last takes the
    rest); together they are the chunk's audio, byte for byte."""
    session = await make_session(run=False)
    comm = await _connected(as_staff(communicator(session.id, parts=1)))
    await sync_to_async(services.session_run)(session_id=session.id, worker="test")
    frames, audio = await receive_until_closed(comm)
    parts = chunks_in_parts(frames, audio)
    stored = await stored_pcm(session)
    assert [b"".join(p) for _, p in sorted(parts.items())] == stored
    assert max(len(p) for p in parts.values()) >= 3  # a sentence of espeak's is long enough
    for chunk in parts.values():
        assert [len(p) for p in chunk] == [len(p) for p in pcm_parts(b"".join(chunk))]
        assert len(chunk[0]) <= FIRST_PART_BYTES
    assert frames[-1]["type"] == "done"


@pytest.mark.parametrize(
    ("sent", "idle_s", "pcm_bytes", "pauses"),
    [
        (0, 0.0, 100_000, True),  # a fresh socket
        (200_000, 0.0, 100_000, False),  # past its first 128 KB, audio just sent
        (200_000, 0.3, 100_000, True),  # the same after an idle spell (Linux's window)
        (0, 0.0, 8_000, False),  # one part: nothing to hold back
    ],
)
async def test_a_chunks_first_part_goes_out_alone_where_a_window_starts(
    monkeypatch, sent, idle_s, pcm_bytes, pauses
):
    """P92: on a fresh socket, or one idle for a while, the first part is written and the
    loop turned over (FIRST_PART_ALONE_S) before the rest, so that it leaves daphne in a
    write of its own: a TLS proxy (Caddy) then ends a record with it, and does not send it
    in a record that the rest makes longer than the first window. Elsewhere, no pause."""
    from types import SimpleNamespace

    from tts import consumers

    now = 1000.0
    events: list = []

    async def send(text_data=None, bytes_data=None):
        events.append("text" if text_data is not None else len(bytes_data) - 4)

    async def sleep(seconds):
        events.append(("pause", seconds))

    monkeypatch.setattr(consumers, "asyncio", SimpleNamespace(sleep=sleep))
    monkeypatch.setattr(consumers, "time", SimpleNamespace(monotonic=lambda: now))
    consumer = consumers.SessionConsumer()
    consumer.parts, consumer.send, consumer.frames = True, send, asyncio.Lock()
    consumer.audio_sent, consumer.audio_sent_at = sent, now - idle_s
    pcm = bytes(pcm_bytes)
    await consumer.send_chunk({"seq": 0}, pcm)

    sizes = [len(p) for p in pcm_parts(pcm)]
    pause = [("pause", consumers.FIRST_PART_ALONE_S)] if pauses else []
    assert events == ["text", sizes[0], *pause, *sizes[1:]]
    assert consumer.audio_sent == sent + pcm_bytes and consumer.audio_sent_at == now


async def test_a_reply_to_the_client_never_comes_between_a_chunks_parts(monkeypatch):
    """A ping that arrives while a chunk's first part waits for the rest (P92): its pong
    goes out after the chunk's last part, not among them (a client may take the frames
    after a `chunk` frame as its parts)."""
    from types import SimpleNamespace

    from tts import consumers

    out: list = []
    replies: list[asyncio.Task] = []

    async def send(text_data=None, bytes_data=None):
        out.append(json.loads(text_data)["type"] if text_data is not None else "part")

    async def sleep(seconds):  # the pause: the client's ping comes meanwhile
        replies.append(asyncio.create_task(consumer.receive(json.dumps({"type": "ping"}))))
        await asyncio.sleep(0.05)

    monkeypatch.setattr(consumers, "asyncio", SimpleNamespace(sleep=sleep))
    consumer = consumers.SessionConsumer()
    consumer.parts, consumer.send, consumer.frames = True, send, asyncio.Lock()
    pcm = bytes(100_000)
    await consumer.send_chunk({"seq": 0}, pcm)
    await asyncio.gather(*replies)
    assert out == ["chunk", *["part"] * len(pcm_parts(pcm)), "pong"]


async def test_a_parts_socket_resuming_gets_stored_chunks_in_parts_too():
    session = await make_session()
    comm = await _connected(as_staff(communicator(session.id, after=0, parts="true")))
    frames, audio = await receive_until_closed(comm)
    parts = chunks_in_parts(frames, audio)
    assert sorted(parts) == list(range(1, frames[0]["total_chunks"]))
    assert [b"".join(parts[seq]) for seq in sorted(parts)] == (await stored_pcm(session))[1:]


async def test_without_parts_each_chunk_is_one_binary_frame():
    session = await make_session()
    comm = await _connected(as_staff(communicator(session.id, parts=0)))
    frames, audio = await receive_until_closed(comm)
    assert not any("parts" in f for f in frames)
    assert [a[4:] for a in audio] == await stored_pcm(session)


@pytest.mark.parametrize("parts", ["maybe", "2", "-1"])
async def test_a_bad_parts_gets_an_error_frame_and_close_4400(parts):
    session = await make_session(run=False)
    await _connected(comm := as_staff(communicator(session.id, parts=parts)))
    error = await comm.receive_json_from()
    assert error["type"] == "error" and error["code"] == "bad_parts"
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4400}


async def test_ping_pong_and_bad_messages_keep_the_socket_open():
    session = await make_session(run=False)
    comm = await _connected(as_staff(communicator(session.id)))
    assert (await comm.receive_json_from())["type"] == "session"
    assert (await comm.receive_json_from())["type"] == "status"  # queued, with its position
    await comm.send_to(text_data="not json")
    assert (await comm.receive_json_from())["code"] == "bad_json"
    await comm.send_to(text_data="[" * 3000)  # json's RecursionError, not a ValueError
    assert (await comm.receive_json_from())["code"] == "bad_json"
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await comm.receive_json_from())["code"] == "bad_message"
    await comm.send_json_to({"type": "shout"})
    error = await comm.receive_json_from()
    assert error == {
        "type": "error",
        "code": "unknown_type",
        "fatal": False,
        "message": error["message"],
    }
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from() == {"type": "pong"}
    await comm.disconnect()


async def test_cancel_ends_the_stream_with_a_fatal_error():
    session = await make_session(run=False)
    comm = await _connected(as_staff(communicator(session.id)))
    await comm.receive_json_from()
    await comm.receive_json_from()
    await comm.send_json_to({"type": "cancel"})
    frames, _ = await receive_until_closed(comm)
    error = [f for f in frames if f["type"] == "error"][-1]
    assert error["code"] == "cancelled" and error["fatal"] is True


async def _watching(session) -> WebsocketCommunicator:
    comm = await _connected(as_staff(communicator(session.id)))
    assert (await comm.receive_json_from())["type"] == "session"
    assert (await comm.receive_json_from())["type"] == "status"
    return comm


@sync_to_async
def _delete_rows(session_id) -> None:
    from tts.models import TTSSession

    TTSSession.objects.filter(pk=session_id).delete()


async def test_a_session_deleted_after_its_cancel_ends_its_socket_with_the_cancel():
    """The admin's delete cancels an active session, then deletes it: a socket that reads
    it after the delete gets the cancel's fatal error from the event, not a 1011."""
    session = await make_session(run=False)
    comm = await _watching(session)
    await _delete_rows(session.id)
    await sync_to_async(broadcast.broadcast_error)(
        session.id, code="cancelled", message="Narration was cancelled."
    )
    assert await comm.receive_json_from() == {
        "type": "error",
        "code": "cancelled",
        "message": "Narration was cancelled.",
        "fatal": True,
    }
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 1000}


async def test_a_session_deleted_before_its_end_was_read_closes_its_socket_with_4404():
    session = await make_session(run=False)
    comm = await _watching(session)
    await _delete_rows(session.id)
    await sync_to_async(broadcast.broadcast_done)(session.id, total_chunks=3, duration_ms=900)
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4404}


async def test_a_session_requeued_by_the_recovery_sweep_tells_its_listeners(monkeypatch):
    """Its worker died: the sweep puts it back in the queue and its sockets hear
    `queued`, as for every status change (and it is dispatched again: recorded here, not
    sent, or the live stack's worker of an earlier test would run it, on this database,
    under the flush that ends the test)."""
    from datetime import timedelta

    from django.utils import timezone

    from tts.models import TTSSession

    session = await make_session(run=False)

    @sync_to_async
    def claimed_by_a_dead_worker() -> None:
        assert services.session_claim(session_id=session.id, worker="dead")
        long_ago = timezone.now() - timedelta(hours=1)
        TTSSession.objects.filter(pk=session.id).update(heartbeat_at=long_ago)

    await claimed_by_a_dead_worker()
    comm = await _connected(as_staff(communicator(session.id)))
    opening = await comm.receive_json_from()
    assert opening["type"] == "session" and opening["status"] == "running"
    dispatched: list = []
    monkeypatch.setattr(
        services, "session_dispatch", lambda *, session_id: dispatched.append(session_id)
    )
    report = await sync_to_async(services.sessions_recover)()
    assert report.requeued == 1 and dispatched == [session.id]
    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "status" and frame["status"] == "queued"
    await comm.disconnect()


async def _connected(comm: WebsocketCommunicator) -> WebsocketCommunicator:
    connected, _ = await comm.connect()
    assert connected
    return comm


async def test_a_live_chunk_after_a_gap_is_preceded_by_the_missing_chunks_from_storage():
    """The channel layer dropped chunks 0 and 1; chunk 2 arrives live: 0 and 1 come
    from storage first, and a late duplicate of 1 is ignored."""
    session = await make_session(run=False)
    comm = await _connected(as_staff(communicator(session.id)))
    assert (await comm.receive_json_from())["type"] == "session"
    await comm.receive_json_from()  # queued status

    @sync_to_async
    def store_three_chunks():
        stored, total = store_first_chunks(session.id, 3, worker="gap-test")
        chunks = [
            (services.chunk_meta(row, total_chunks=total), audio.pcm) for row, audio in stored
        ]
        broadcast.flush()  # the claim's status event goes out before the chunks below
        return chunks

    from channels.layers import get_channel_layer

    from tts.broadcast import chunk_event, session_group

    chunks = await store_three_chunks()
    layer = get_channel_layer()
    await layer.group_send(session_group(session.id), chunk_event(*chunks[2]))
    await layer.group_send(session_group(session.id), chunk_event(*chunks[1]))
    seqs = []
    while len(seqs) < 3:
        message = await comm.receive_output(timeout=5)
        if message.get("bytes") is not None:
            seqs.append(struct.unpack("<I", message["bytes"][:4])[0])
            assert message["bytes"][4:] == chunks[seqs[-1]][1]
        elif json.loads(message["text"])["type"] == "chunk":
            continue
    assert seqs == [0, 1, 2]
    assert await comm.receive_nothing(timeout=0.3)
    await comm.disconnect()


async def test_a_chunk_broadcast_before_this_listener_joined_arrives_once_it_is_stored():
    """The worker broadcasts a chunk before storing it. A listener that joined after that
    broadcast, and read storage before the commit, gets the chunk on the `stored` event."""
    session = await make_session(run=False)
    comm = await _connected(as_staff(communicator(session.id)))
    assert (await comm.receive_json_from())["type"] == "session"
    await comm.receive_json_from()  # queued status

    @sync_to_async
    def store_first_chunk() -> bytes:
        [(_, audio)], _ = store_first_chunks(session.id, 1, worker="late")
        return audio.pcm

    from channels.layers import get_channel_layer

    from tts.broadcast import session_group

    pcm = await store_first_chunk()  # its live event went out before this listener joined
    await get_channel_layer().group_send(
        session_group(session.id), {"type": "tts.stored", "seq": 0}
    )
    while (message := await comm.receive_output(timeout=5)).get("bytes") is None:
        assert json.loads(message["text"])["type"] in ("status", "chunk")
    assert message["bytes"] == struct.pack("<I", 0) + pcm
    await comm.disconnect()


async def test_live_chunks_and_the_leaving_take_no_trip_to_a_thread(thread_hops):
    """Channels' own dispatch first sent every message to asgiref's one sync thread (to
    close stale connections), where each chunk of each listener queued behind the other
    sockets' database trips; this consumer's trips close their own."""
    from channels.layers import get_channel_layer

    from tts.broadcast import chunk_event, session_group

    session = await make_session(run=False)
    comm = await _connected(as_staff(communicator(session.id)))
    assert (await comm.receive_json_from())["type"] == "session"
    await comm.receive_json_from()  # queued status
    thread_hops.clear()  # its opening went to the database: counted from here
    pcm = b"\x01\x00" * 2205
    for seq in range(3):
        meta = {"seq": seq, "text": f"Part {seq}.", "char_start": 0, "char_end": 7}
        meta |= {"samples": 2205, "sample_rate": 22050, "duration_ms": 100, "total_chunks": 9}
        await get_channel_layer().group_send(session_group(session.id), chunk_event(meta, pcm))
        assert (await comm.receive_json_from())["seq"] == seq
        assert (await comm.receive_output(timeout=5))["bytes"][4:] == pcm
    await comm.disconnect()  # leaving takes no trip either
    assert thread_hops == []


async def test_a_burst_of_sockets_beyond_the_redis_pool_all_join():
    """channels-redis fails commands beyond 100 connections per process; joins queue for
    a gate instead, so 150 sockets connecting at once (a deploy: everyone reconnects) all
    get their session frame."""
    session = await make_session(run=False)
    comms = [as_staff(communicator(session.id)) for _ in range(150)]
    await asyncio.gather(*(c.connect() for c in comms))
    frames = await asyncio.gather(*(c.receive_json_from(timeout=30) for c in comms))
    assert [f["type"] for f in frames] == ["session"] * 150
    await asyncio.gather(*(c.disconnect() for c in comms))


@pytest.mark.parametrize("after", ["abc", "-5", "1.5", str(2**40)])
async def test_a_bad_after_gets_an_error_frame_and_close_4400(after):
    session = await make_session(run=False)
    comm = as_staff(communicator(session.id, after=after))
    await _connected(comm)
    error = await comm.receive_json_from()
    assert error["type"] == "error" and error["code"] == "bad_after"
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4400}


async def test_a_running_status_sent_with_the_first_chunk_comes_right_before_it(monkeypatch):
    """A quick voice's `running` status rides in the first chunk's event (one event less on
    the way to first audio); the socket still sends it as its own frame, first."""
    monkeypatch.setitem(generation._first_segment_ms, "en-us", 1)
    session = await make_session(run=False)
    comm = await _connected(as_staff(communicator(session.id)))
    opening = [await comm.receive_json_from(), await comm.receive_json_from()]
    await sync_to_async(services.session_run)(session_id=session.id, worker="test")
    later, audio = await receive_until_closed(comm)
    frames = opening + later
    kinds = [(frame["type"], frame.get("status"), frame.get("seq")) for frame in frames]
    assert kinds[:4] == [
        ("session", "queued", None),
        ("status", "queued", None),
        ("status", "running", None),
        ("chunk", None, 0),
    ]
    assert [kind for kind in kinds if kind[0] == "status"][2:] == [("status", "completed", None)]
    assert "status" not in frames[3] and len(audio) == frames[-1]["total_chunks"]


# A socket opened before its session exists (?pending=1: the client chose the id and opened
# the socket while its POST was in flight) -------------------------------------------------


def pending_communicator(session_id, pending: object = 1) -> WebsocketCommunicator:
    return as_staff(communicator(session_id, pending=pending))


async def test_a_pending_socket_hears_its_session_from_the_first_chunk():
    """Connected before the row exists; the worker's first event opens it, and every chunk
    arrives exactly once, in order, then done."""
    session_id = uuid.uuid4()
    comm = pending_communicator(session_id)
    await _connected(comm)
    await asyncio.sleep(0.2)  # the socket has joined and found nothing
    session = await make_session(session_id=session_id)
    frames, audio = await receive_until_closed(comm)
    assert frames[0]["type"] == "session" and frames[0]["session_id"] == str(session.id)
    seqs = [f["seq"] for f in frames if f["type"] == "chunk"]
    assert seqs == list(range(frames[-1]["total_chunks"])) and frames[-1]["type"] == "done"
    assert [struct.unpack("<I", a[:4])[0] for a in audio] == seqs


async def test_a_pending_socket_hears_a_replayed_narration_without_waiting_for_a_poll(
    monkeypatch,
):
    """A text narrated before is complete the moment its POST commits; the `done` event
    that the creation rings opens the waiting socket, and the audio is the first one's."""
    monkeypatch.setattr("tts.consumers.PENDING_FIRST_POLL_S", 30.0)  # only the event can
    first = await make_session()
    _, first_audio = await receive_until_closed(await _connected(as_staff(communicator(first.id))))
    session_id = uuid.uuid4()
    comm = pending_communicator(session_id)
    await _connected(comm)
    await asyncio.sleep(0.2)  # the socket has joined and found nothing
    replayed = await make_session(session_id=session_id, run=False)
    assert replayed.status == "completed"
    frames, audio = await receive_until_closed(comm)
    assert frames[0]["type"] == "session" and frames[0]["status"] == "completed"
    assert frames[-1]["type"] == "done" and len(audio) == frames[-1]["total_chunks"]
    assert audio == first_audio


async def test_a_pending_socket_finds_a_queued_session_by_polling():
    """No worker event comes (the session waits in the queue): the poll opens it."""
    session_id = uuid.uuid4()
    comm = pending_communicator(session_id)
    await _connected(comm)
    await make_session(session_id=session_id, run=False)
    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "session" and frame["status"] == "queued"
    await comm.disconnect()


async def test_a_pending_socket_is_opened_at_once_by_a_post_this_process_answers(monkeypatch):
    """No worker runs and the first poll is 30 s away: the session's commit wakes it."""
    from tts import waiting

    monkeypatch.setattr("tts.consumers.PENDING_FIRST_POLL_S", 30.0)
    session_id = uuid.uuid4()
    comm = pending_communicator(session_id)
    await _connected(comm)
    await asyncio.sleep(0.2)  # the socket has joined and found nothing
    assert session_id in waiting._waiting
    await make_session(session_id=session_id, run=False)
    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "session" and frame["status"] == "queued"
    await comm.disconnect()
    assert session_id not in waiting._waiting  # nothing is left behind


@pytest.mark.usefixtures("private_channel_layer")
async def test_the_doorbell_names_a_socket_opened_with_the_post_and_saves_the_first_send_a_trip(
    monkeypatch,
):
    """P73: the socket opened with the POST has joined its session's group when the POST
    rings the workers' doorbell; the doorbell names its channel, and the worker's first
    send to the group (the first chunk, its `running` status in it) takes one trip to
    Redis: no second trip for members it did not know. The same session without the names
    makes that second trip; both sockets get every chunk once."""
    from channels.layers import get_channel_layer

    from tts import waiting
    from tts.worker import GenerateConsumer

    monkeypatch.setattr("tts.consumers.PENDING_FIRST_POLL_S", 30.0)
    layer = get_channel_layer()
    second_trips, send_to = [], layer._send_to

    async def counted(channel_names, group, message):
        second_trips.append(message["type"])
        return await send_to(channel_names, group, message)

    monkeypatch.setattr(layer, "_send_to", counted)

    async def narrate(*, named: bool) -> list[str]:
        session_id = uuid.uuid4()
        comm = pending_communicator(session_id)
        await _connected(comm)
        group = layer._group_key(broadcast.session_group(session_id))
        for _ in range(100):  # the socket has joined
            if members := await layer.connection(0).zrange(group, 0, -1):
                break
            await asyncio.sleep(0.01)
        owner = Owner(user_id=None, session_key="", is_staff=True)
        text = f"{TEXT} Told {'with' if named else 'without'} the names."  # no replay
        await sync_to_async(services.session_create)(text=text, owner=owner, session_id=session_id)
        bell = await layer.receive(broadcast.GENERATE_CHANNEL)
        assert bell["listeners"] == [m.decode() for m in members] and len(members) == 1
        if not named:
            del bell["listeners"]
        second_trips.clear()
        await sync_to_async(GenerateConsumer().tts_generate)(bell)
        frames, audio = await receive_until_closed(comm)
        seqs = [f["seq"] for f in frames if f["type"] == "chunk"]
        assert seqs == list(range(frames[-1]["total_chunks"])) and len(audio) == len(seqs)
        assert waiting.listeners(session_id) == []  # nothing is kept after the wait
        return second_trips

    assert await narrate(named=True) == []
    assert len(await narrate(named=False)) == 1  # the first event (a status or the chunk)


@pytest.fixture
def reads(monkeypatch):
    """Every database read of a socket's session (SessionConsumer._open)."""
    from tts.consumers import SessionConsumer

    seen, original = [], SessionConsumer._open

    def counted(self):
        seen.append(self.session_id)
        return original(self)

    monkeypatch.setattr(SessionConsumer, "_open", counted)
    return seen


@pytest.fixture
def joins(monkeypatch):
    """The group of every group_add a socket makes."""
    from channels.layers import get_channel_layer

    seen, layer = [], get_channel_layer()
    original = layer.group_add

    async def counted(group, channel):
        seen.append(group)
        return await original(group, channel)

    monkeypatch.setattr(layer, "group_add", counted)
    return seen


async def test_a_pending_socket_reads_once_the_post_its_process_answers_has_committed(
    monkeypatch, reads, joins
):
    """Not beside the POST it waits for, in the same process (docs/benchmarks.md, P43):
    joined at once (no live chunk can slip by), but no read while the POST runs; one read
    after its commit, with no poll needed; then the session as usual."""
    from tts import waiting

    monkeypatch.setattr("tts.consumers.PENDING_FIRST_POLL_S", 30.0)
    session_id = uuid.uuid4()
    with waiting.answering_post("POST"):
        comm = pending_communicator(session_id)
        await _connected(comm)
        await asyncio.sleep(0.2)
        assert (reads, joins) == ([], [broadcast.session_group(session_id)])
        await make_session(session_id=session_id, run=False)  # its commit wakes the socket
        frame = await comm.receive_json_from(timeout=5)
        assert frame["type"] == "session" and frame["status"] == "queued"
        assert reads == [session_id]
    await sync_to_async(services.session_run)(session_id=session_id, worker="test")
    frames, audio = await receive_until_closed(comm)
    assert frames[-1]["type"] == "done" and len(audio) == frames[-1]["total_chunks"]


async def test_a_pending_socket_reads_when_its_process_answers_no_post_any_more(monkeypatch, reads):
    """The POSTs it waited for were others' (its own went to another process, which made
    the session): it reads once the last of them has ended, not at the next poll, and
    not as each one ends."""
    from tts import waiting

    monkeypatch.setattr("tts.consumers.PENDING_FIRST_POLL_S", 30.0)
    session_id = uuid.uuid4()
    with waiting.answering_post("POST"):
        with waiting.answering_post("POST"):
            comm = pending_communicator(session_id)
            await _connected(comm)
            with monkeypatch.context() as elsewhere:  # made by another process: no wake-up
                elsewhere.setattr(waiting, "created", lambda session_id: None)
                await make_session(session_id=session_id, run=False)
        await asyncio.sleep(0.2)
        assert reads == []  # one POST ended, another is still answered
    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "session" and reads == [session_id]
    await comm.disconnect()
    assert waiting._posts == 0 and session_id not in waiting._waiting


async def test_a_pending_socket_hears_its_replayed_narration_at_its_posts_commit(monkeypatch):
    """A text narrated before is complete when its POST commits: the commit wakes the
    socket (no poll, no POST end), which reads it whole."""
    from tts import waiting

    monkeypatch.setattr("tts.consumers.PENDING_FIRST_POLL_S", 30.0)
    first = await make_session()
    session_id = uuid.uuid4()
    with waiting.answering_post("POST"):
        comm = pending_communicator(session_id)
        await _connected(comm)
        replayed = await make_session(session_id=session_id, run=False, text=first.text)
        assert replayed.status == "completed"
        frames, audio = await receive_until_closed(comm)
    assert frames[0]["type"] == "session" and frames[-1]["type"] == "done"
    assert len(audio) == frames[-1]["total_chunks"] == replayed.total_chunks


async def test_a_pending_socket_closed_at_once_leaves_nothing_waiting():
    from tts import waiting

    session_id = uuid.uuid4()
    with waiting.answering_post("POST"):
        comm = pending_communicator(session_id)
        await _connected(comm)
        await comm.disconnect()
        assert session_id not in waiting._waiting and not waiting._until_no_posts
        assert waiting.listeners(session_id) == []


async def test_a_pending_socket_that_cannot_join_is_not_named_to_the_workers(monkeypatch):
    """Its join failed (Redis away): closed with 1011 so that the client reconnects, and
    no doorbell names it."""
    from channels.layers import get_channel_layer

    from tts import waiting

    async def failing(group, channel):
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(get_channel_layer(), "group_add", failing)
    session_id = uuid.uuid4()
    comm = pending_communicator(session_id)
    await _connected(comm)
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 1011}
    assert waiting.listeners(session_id) == [] and session_id not in waiting._waiting


async def test_a_pending_socket_whose_read_fails_after_its_wake_up_backs_off(monkeypatch, settings):
    """Woken by its POST, but the read fails (the database is away): it tries again at the
    poll's pace, not in a loop as fast as the reads fail."""
    from tts import waiting
    from tts.consumers import SessionConsumer

    settings.TTS_PENDING_SOCKET_S = 0.5
    reads = []

    def failing_open(self):
        reads.append(1)
        if len(reads) > 1:  # the first read, at connect, finds nothing; then the database fails
            raise RuntimeError("the database is away")
        return 4404, None, [], []

    monkeypatch.setattr(SessionConsumer, "_open", failing_open)
    session_id = uuid.uuid4()
    comm = pending_communicator(session_id)
    await _connected(comm)
    await asyncio.sleep(0.05)
    waiting.created(session_id)
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4404}
    assert len(reads) <= 8  # the wake-up, then polls at 0.1, 0.2, ... s: not thousands


async def test_a_pending_socket_for_a_session_never_created_closes_with_4404(settings):
    settings.TTS_PENDING_SOCKET_S = 0.3
    from tts import waiting

    session_id = uuid.uuid4()
    comm = pending_communicator(session_id)
    await _connected(comm)
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4404}
    assert session_id not in waiting._waiting


async def test_a_pending_socket_for_someone_elses_session_closes_with_4403():
    _, cookie = await signed_in("stranger")
    session_id = uuid.uuid4()
    comm = communicator(session_id, pending=1, cookie=cookie)
    await _connected(comm)
    await asyncio.sleep(0.2)  # pending: nothing yet
    await make_session(session_id=session_id, staff=False)
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4403}


async def test_a_pending_socket_with_no_cookie_and_no_user_is_refused_at_once():
    """No session could ever be its own: no ten seconds of polling for a made-up id."""
    comm = communicator(uuid.uuid4(), pending=1)
    await _connected(comm)
    assert (await comm.receive_output(timeout=1)) == {"type": "websocket.close", "code": 4403}


async def test_pending_on_an_existing_session_changes_nothing(monkeypatch):
    """With no POST in this process to wait for, the socket reads at once (no poll)."""
    monkeypatch.setattr("tts.consumers.PENDING_FIRST_POLL_S", 30.0)
    session = await make_session()
    frames, _ = await receive_until_closed(await _connected(pending_communicator(session.id)))
    assert frames[0]["type"] == "session" and frames[-1]["type"] == "done"


@pytest.mark.parametrize("pending", ["maybe", "2", "-1", "yes please"])
async def test_a_bad_pending_gets_an_error_frame_and_close_4400(pending):
    comm = pending_communicator(uuid.uuid4(), pending=pending.replace(" ", "%20"))
    await _connected(comm)
    error = await comm.receive_json_from()
    assert error["type"] == "error" and error["code"] == "bad_pending"
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4400}


async def test_a_pending_socket_whose_opening_fails_closes_so_the_client_resumes(monkeypatch):
    """The session exists, but sending its first frames fails (a database error while
    reading stored chunks): nothing would retry, so the socket closes with 1011 and the
    client reconnects with after=, instead of waiting for events that may never come."""
    from tts import consumers

    async def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    session_id = uuid.uuid4()
    comm = pending_communicator(session_id)
    await _connected(comm)
    await asyncio.sleep(0.2)  # the socket has joined and found nothing
    monkeypatch.setattr(consumers.SessionConsumer, "_finish_if_over", broken)
    await make_session(session_id=session_id, run=False)
    outputs = []
    while not outputs or outputs[-1]["type"] != "websocket.close":
        outputs.append(await comm.receive_output(timeout=5))
    assert json.loads(outputs[0]["text"])["type"] == "session"
    assert outputs[-1] == {"type": "websocket.close", "code": 1011}
