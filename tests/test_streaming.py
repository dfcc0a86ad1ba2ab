"""Streaming without loss, through a real daphne, worker and Redis: resume after a drop
at every position, many listeners, lost group messages, cancel, access."""

from __future__ import annotations

import json
import threading

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from scripts.stack import Stack
from tests.conftest import ARTIFACTS, private_stack_env
from tts.client import NarrationClient

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SENTENCES = [
    "The lamp room was dark.",
    "Ninety-one steps wound up the tower.",
    "At the top, the great lens sat still and cold.",
    "The wick was dry.",
    "The oil can was empty.",
    "Somebody had forgotten, or somebody had wanted it forgotten.",
    "Far out on the water, a green light rose and fell.",
    "A ship, and close.",
    "Too close, and coming closer with every wave.",
    "Mara ran for the stairs.",
]


def ten_chunk_text(variant: int) -> str:
    return " ".join(SENTENCES) + f" That was night number {variant}."


@pytest.mark.parametrize("drop_after", range(1, 11))
def test_a_drop_after_any_chunk_resumes_to_byte_identical_audio(live_stack, drop_after):
    client = NarrationClient(live_stack.base_url)
    session_id = client.create(text=ten_chunk_text(drop_after))["id"]
    result = client.stream(session_id, drop_after_chunks=drop_after, timeout=60)
    assert result.done is not None and result.duplicates == 0
    assert result.done["total_chunks"] >= 10
    wav = client.audio(session_id)
    assert wav[44:] == result.pcm


@pytest.mark.parametrize("drop_after", [1, 2, 3, 5, 8])
def test_a_drop_inside_a_chunk_sent_in_parts_resumes_to_byte_identical_audio(
    live_stack, drop_after
):
    """?parts=1 over daphne and a worker: each chunk in parts; a connection dropped after
    any binary frame (inside a chunk or at its end) resumes before the chunk it had only
    in part, and the joined audio is the stored narration's, byte for byte."""
    client = NarrationClient(live_stack.base_url)
    session_id = client.create(text=ten_chunk_text(200 + drop_after))["id"]
    result = client.stream(session_id, drop_after_chunks=drop_after, timeout=60, parts=True)
    assert result.done is not None and result.duplicates == 0 and result.connections == 2
    assert max(frame["parts"] for frame in result.chunks.values()) >= 2
    assert not result.parts
    assert client.audio(session_id)[44:] == result.pcm


def test_ten_listeners_and_a_late_joiner_receive_identical_streams(live_stack):
    owner = NarrationClient(live_stack.base_url)
    session_id = owner.create(text=ten_chunk_text(100) * 3)["id"]
    results: list = [None] * 11

    def listen(index: int) -> None:
        results[index] = owner.stream(session_id, timeout=90)

    threads = [threading.Thread(target=listen, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    first = threads[0]
    first.join(timeout=0.3)  # a moment later, someone joins mid-stream
    late = threading.Thread(target=listen, args=(10,))
    late.start()
    for thread in [*threads, late]:
        thread.join(timeout=120)
    assert all(r is not None and r.done is not None for r in results)
    assert len({r.pcm for r in results}) == 1
    assert all(r.duplicates == 0 for r in results)
    assert results[0].pcm == owner.audio(session_id)[44:]


def test_cancel_mid_stream_reaches_every_listener(live_stack):
    owner = NarrationClient(live_stack.base_url)
    session_id = owner.create(text=ten_chunk_text(200) * 8)["id"]
    listener = {}
    thread = threading.Thread(target=lambda: listener.update(r=owner.stream(session_id)))
    thread.start()
    cookie = "; ".join(f"{c.name}={c.value}" for c in owner.cookies)
    with connect(
        owner.ws_url(session_id, -1),
        origin=live_stack.base_url,
        additional_headers={"Cookie": cookie},
        max_size=None,
    ) as ws:
        ws.recv(timeout=10)  # session frame
        ws.send(json.dumps({"type": "cancel"}))
        frames = []
        while True:
            message = ws.recv(timeout=20)
            if isinstance(message, str):
                frames.append(json.loads(message))
                if frames[-1]["type"] == "error":
                    break
    thread.join(timeout=30)
    assert frames[-1] == {
        "type": "error",
        "code": "cancelled",
        "fatal": True,
        "message": frames[-1]["message"],
    }
    assert listener["r"].error["code"] == "cancelled"
    assert owner.session(session_id)["status"] == "cancelled"


def test_another_visitors_session_is_refused(live_stack):
    session_id = NarrationClient(live_stack.base_url).create(text="Mine alone.")["id"]
    stranger = NarrationClient(live_stack.base_url)
    with (
        connect(stranger.ws_url(session_id, -1), origin=live_stack.base_url) as ws,
        pytest.raises(Exception) as closed,
    ):
        ws.recv(timeout=10)
    assert closed.value.rcvd.code == 4403
    status, _ = stranger.request("GET", f"/api/tts/sessions/{session_id}/")
    assert status == 403


def test_a_cross_origin_socket_is_refused(live_stack):
    client = NarrationClient(live_stack.base_url)
    session_id = client.create(text="Hello.")["id"]
    with pytest.raises(InvalidStatus) as refused:
        connect(client.ws_url(session_id, -1), origin="http://evil.example")
    assert refused.value.response.status_code == 403


@pytest.fixture
def tiny_capacity_stack(django_db_setup, django_db_blocker):
    """A worker whose channel layer holds one message per listener: most live chunk
    events are dropped, as they are when a real listener falls behind."""
    with django_db_blocker.unblock():
        stack = Stack(
            env=private_stack_env(CHANNEL_LAYER_CAPACITY="1"),
            workers=1,
            log_dir=ARTIFACTS / "logs-tiny",
        ).start()
    yield stack
    stack.stop()


def test_chunks_dropped_by_the_channel_layer_are_recovered_from_storage(tiny_capacity_stack):
    client = NarrationClient(tiny_capacity_stack.base_url)
    session_id = client.create(text=ten_chunk_text(300) * 2)["id"]
    result = client.stream(session_id, timeout=60)
    assert result.done is not None and result.duplicates == 0
    assert sorted(result.audio) == list(range(result.done["total_chunks"]))
    assert result.pcm == client.audio(session_id)[44:]
