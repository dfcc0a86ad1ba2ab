"""tts.layers.RedisChannelLayer against the real Redis: fewer round trips, and the same
stored messages as channels-redis's own layer (each receives what the other sends)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer as CoreLayer
from django.conf import settings

from tts.layers import RedisChannelLayer

HOSTS = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]


@pytest.fixture
def layers():
    """Ours and channels-redis's, on one private prefix; flushed afterwards."""
    prefix = f"layertest{uuid.uuid4().hex[:8]}"
    options = {"hosts": HOSTS, "prefix": prefix, "capacity": 3, "expiry": 60}
    ours, core = RedisChannelLayer(**options), CoreLayer(**options)
    yield ours, core
    asyncio.run(_flush(ours, core))


async def _flush(*layers) -> None:
    for layer in layers:
        await layer.flush()


async def warm(layer) -> None:
    """Redis has the layer's scripts (a fresh Redis makes the first call of each load it)."""
    await layer.group_add("warm-up", "warm-up")
    await layer.send("warm-up", {"type": "warm"})
    await layer.group_send("warm-up", {"type": "warm"})
    await layer.group_send("warm-up", {"type": "warm"})  # to a group it knows


def round_trips(layer, monkeypatch) -> list[str]:
    """The commands the layer's connection sends (each is one round trip)."""
    sent: list[str] = []
    connection = layer.connection(0)
    real = connection.execute_command

    async def counting(*args, **options):
        sent.append(str(args[0]))
        return await real(*args, **options)

    monkeypatch.setattr(connection, "execute_command", counting)
    return sent


def test_a_send_is_one_round_trip_and_reaches_a_channels_redis_receiver(layers, monkeypatch):
    ours, core = layers

    async def run():
        await warm(ours)
        trips = round_trips(ours, monkeypatch)
        await ours.send("tts-generate", {"type": "tts.generate", "session_id": "a"})
        assert trips == ["EVALSHA"]
        assert await core.receive("tts-generate") == {"type": "tts.generate", "session_id": "a"}
        local = await core.new_channel()
        await ours.send(local, {"type": "hello"})
        assert await core.receive(local) == {"type": "hello"}
        await _flush(ours, core)

    asyncio.run(run())


def test_a_group_send_is_two_round_trips_and_reaches_every_member(layers, monkeypatch):
    ours, core = layers

    async def run():
        # two process-local channels share one Redis key; a general one has its own
        first, second = await core.new_channel(), await core.new_channel()
        for channel in (first, second, "general.listener"):
            await core.group_add("readers", channel)
        await warm(ours)
        trips = round_trips(ours, monkeypatch)
        await ours.group_send("readers", {"type": "tts.chunk", "pcm": b"\x01\x02"})
        assert trips == ["EVALSHA", "EVALSHA"]
        for channel in (first, second, "general.listener"):
            assert await core.receive(channel) == {"type": "tts.chunk", "pcm": b"\x01\x02"}
        await _flush(ours, core)

    asyncio.run(run())


def test_a_group_add_is_one_round_trip_and_stores_what_channels_redis_stores(layers, monkeypatch):
    ours, core = layers

    async def run():
        await warm(ours)
        channel = await core.new_channel()
        trips = round_trips(ours, monkeypatch)
        before = time.time()
        await ours.group_add("readers", channel)
        assert trips == ["EVALSHA"]
        connection, key = ours.connection(0), ours._group_key("readers")
        assert before <= await connection.zscore(key, channel) <= time.time()
        assert ours.group_expiry - 5 <= await connection.ttl(key) <= ours.group_expiry
        await core.group_send("readers", {"n": 1})
        assert await core.receive(channel) == {"n": 1}
        await _flush(ours, core)

    asyncio.run(run())


def test_a_group_sent_to_before_takes_one_round_trip_and_follows_who_joins_and_leaves(
    layers, monkeypatch
):
    """The members the last send found are sent to and the group listed in one script;
    a member that joined since is sent to in a second trip, and a channel key that names a
    member that left (or expired) is held back and sent again naming only those left."""
    ours, core = layers

    async def run():
        connection = ours.connection(0)
        first, second = await core.new_channel(), await core.new_channel()
        process_key = ours.prefix + ours.non_local_name(first)  # both channels' key
        for channel in (first, second, "general.listener", "expiring"):
            await core.group_add("readers", channel)
        await warm(ours)
        await ours.group_send("readers", {"n": 1})  # learns the members: two trips
        trips = round_trips(ours, monkeypatch)
        await ours.group_send("readers", {"n": 2})
        assert trips == ["EVALSHA"]
        for channel in (first, second, "general.listener", "expiring"):
            assert [(await core.receive(channel))["n"] for _ in range(2)] == [1, 2]

        third = await core.new_channel()  # same process key as first and second
        await core.group_add("readers", third)
        await core.group_discard("readers", first)
        long_ago = time.time() - 2 * ours.group_expiry
        await connection.zadd(ours._group_key("readers"), {"expiring": long_ago})
        trips.clear()
        await ours.group_send("readers", {"n": 3})
        assert trips == ["EVALSHA", "EVALSHA"]
        stored = [core.deserialize(m) for m in await connection.zrange(process_key, 0, -1)]
        assert [sorted(m["__asgi_channel__"]) for m in stored] == [sorted([second, third])]
        assert not await connection.exists(ours.prefix + "expiring")
        for channel in (second, third, "general.listener"):
            assert await core.receive(channel) == {"n": 3}

        trips.clear()
        await ours.group_send("readers", {"n": 4})
        assert trips == ["EVALSHA"]
        for channel in (second, third, "general.listener"):
            assert await core.receive(channel) == {"n": 4}
        assert await connection.zcard(process_key) == 0  # nothing for the one that left
        await _flush(ours, core)

    asyncio.run(run())


def test_members_named_ahead_make_a_groups_first_send_one_round_trip(layers, monkeypatch):
    """A worker's doorbell names the session's sockets (P73): the layer takes them as the
    group's members, so its first send is one trip. A name that is not in the group is
    only a hint: nothing goes to it, and the group as it is gets the message once."""
    ours, core = layers

    async def run():
        socket, elsewhere = await core.new_channel(), await core.new_channel()
        await core.group_add("session", socket)
        await warm(ours)
        ours.expect_members("session", [socket])
        trips = round_trips(ours, monkeypatch)
        await ours.group_send("session", {"n": 1})
        assert trips == ["EVALSHA"]
        assert await core.receive(socket) == {"n": 1}

        # a stale hint: a socket that left before the first send, and one that joined; on
        # one process key, so the message that went out must name only the one in the group
        gone = await core.new_channel()
        await core.group_add("other", elsewhere)
        ours.expect_members("other", [gone])
        trips.clear()
        await ours.group_send("other", {"n": 2})
        assert trips == ["EVALSHA", "EVALSHA"]
        connection, process_key = ours.connection(0), ours.prefix + ours.non_local_name(gone)
        stored = [core.deserialize(m) for m in await connection.zrange(process_key, 0, -1)]
        assert [m["__asgi_channel__"] for m in stored] == [[elsewhere]]
        assert await core.receive(elsewhere) == {"n": 2}
        assert ours._known["other"] == [elsewhere]

        # named before its join lands (the doorbell rang while the socket was joining)
        early = await core.new_channel()
        ours.expect_members("early", [early])
        await ours.group_send("early", {"n": 5})  # nobody in the group yet: nothing stored
        assert await connection.zcard(process_key) == 0 and ours._known["early"] == []
        await core.group_add("early", early)
        await ours.group_send("early", {"n": 6})
        assert await core.receive(early) == {"n": 6}

        # a name repeated in the hint: the message still arrives once
        twice = await core.new_channel()
        await core.group_add("twice", twice)
        ours.expect_members("twice", [twice, twice])
        await ours.group_send("twice", {"n": 7})
        stored = [core.deserialize(m) for m in await connection.zrange(process_key, 0, -1)]
        assert [m["__asgi_channel__"] for m in stored] == [[twice]]
        assert await core.receive(twice) == {"n": 7}

        ours.expect_members("session", ["specific.nobody!x"])  # known now: not replaced
        trips.clear()
        await ours.group_send("session", {"n": 3})
        assert trips == ["EVALSHA"]
        assert await core.receive(socket) == {"n": 3}
        await _flush(ours, core)

    asyncio.run(run())


def test_members_named_ahead_are_ignored_by_a_sharded_layer(layers):
    sharded = RedisChannelLayer(hosts=HOSTS * 2, prefix=layers[0].prefix)
    sharded.expect_members("session", ["specific.abc!def"])
    assert sharded._known == {}


def test_a_doorbell_with_malformed_names_is_only_a_doorbell(layers, monkeypatch):
    """The worker takes the doorbell's names as a hint: a bad session id, names that are
    not a list, and entries that cannot be a socket's channel are ignored, never raised."""
    from tts import broadcast

    ours, _ = layers
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: ours)
    session_id = uuid.uuid4()
    group = broadcast.session_group(session_id)
    broadcast.expect_listeners("not-a-uuid", ["specific.a!b"])
    broadcast.expect_listeners(None, ["specific.a!b"])
    broadcast.expect_listeners(session_id, "specific.a!b")
    assert ours._known == {}
    names = [7, None, "", "general", "specific.a!" + "x" * 200, "specific.a!b", "specific.c!d"]
    broadcast.expect_listeners(session_id, names)
    assert ours._known == {group: ["specific.a!b", "specific.c!d"]}


def test_a_blocking_send_stores_what_a_send_stores_on_the_calling_thread(layers):
    """The workers' doorbell from a request's thread: no event loop, one round trip, the
    same message for channels-redis's receive, and the same refusal when full."""
    ours, core = layers
    redis = ours._blocking_script(0).registered_client
    real, trips = redis.execute_command, []

    def counting(*args, **options):
        trips.append(str(args[0]))
        return real(*args, **options)

    ours._blocking_script(0).registered_client.execute_command = counting
    ours.send_blocking("tts-generate", {"type": "tts.generate", "session_id": "a"})
    assert trips in (["EVALSHA"], ["EVALSHA", "SCRIPT LOAD", "EVALSHA"])  # a fresh Redis
    for n in range(2):
        ours.send_blocking("tts-generate", {"n": n})
    with pytest.raises(ChannelFull):
        ours.send_blocking("tts-generate", {"n": 2})
    with pytest.raises(AssertionError):
        ours.send_blocking("local!abc", {"n": 3})

    async def run():
        received = [await core.receive("tts-generate") for _ in range(3)]
        assert received == [{"type": "tts.generate", "session_id": "a"}, {"n": 0}, {"n": 1}]
        await _flush(ours, core)

    asyncio.run(run())


def test_what_channels_redis_sends_our_layer_receives(layers):
    ours, core = layers

    async def run():
        local = await ours.new_channel()
        await ours.group_add("readers", local)
        await core.group_send("readers", {"type": "a"})
        await core.send(local, {"type": "b"})
        assert [await ours.receive(local) for _ in range(2)] == [{"type": "a"}, {"type": "b"}]
        await _flush(ours, core)

    asyncio.run(run())


def test_a_full_channel_refuses_a_send_and_drops_a_group_send(layers, caplog):
    ours, core = layers

    async def run():
        for n in range(3):
            await ours.send("full", {"n": n})
        with pytest.raises(ChannelFull):
            await ours.send("full", {"n": 3})
        for channel in ("full", "roomy"):
            await core.group_add("readers", channel)
        with caplog.at_level(logging.INFO, logger="channels_redis.core"):
            await ours.group_send("readers", {"n": "group"})
        assert "1 of 2 channels over capacity in group readers" in caplog.text
        assert await core.receive("roomy") == {"n": "group"}
        assert [(await core.receive("full"))["n"] for _ in range(3)] == [0, 1, 2]
        await _flush(ours, core)

    asyncio.run(run())


def test_expired_messages_and_members_are_dropped_as_channels_redis_drops_them(layers):
    ours, core = layers

    async def run():
        connection = ours.connection(0)
        long_ago = time.time() - 2 * ours.group_expiry  # past both expiries
        # an expired message on the channel, and a member of the group that expired
        await connection.zadd(ours.prefix + "old", {core.serialize({"n": "stale"}): long_ago})
        await connection.zadd(ours._group_key("readers"), {"gone": long_ago, "here": time.time()})
        await connection.zadd(ours.prefix + "here", {core.serialize({"n": "stale"}): long_ago})
        await ours.send("old", {"n": "fresh"})
        assert await connection.zcard(ours.prefix + "old") == 1
        await ours.group_send("readers", {"n": "group"})
        assert await connection.zrange(ours._group_key("readers"), 0, -1) == [b"here"]
        assert await core.receive("here") == {"n": "group"}  # the stale one was dropped
        assert await connection.zcard(ours.prefix + "here") == 0
        assert not await connection.exists(ours.prefix + "gone")
        assert await core.receive("old") == {"n": "fresh"}
        await _flush(ours, core)

    asyncio.run(run())


def test_the_scripts_are_loaded_again_after_redis_forgets_them(layers):
    """A restarted Redis has no scripts: the next send and group send load them."""
    ours, core = layers

    async def run():
        await warm(ours)
        await ours.connection(0).script_flush()
        await core.group_add("readers", "listener")
        await ours.send("after", {"n": 1})
        await ours.group_send("readers", {"n": 2})
        assert await core.receive("after") == {"n": 1}
        assert await core.receive("listener") == {"n": 2}
        await _flush(ours, core)

    asyncio.run(run())


def test_a_receive_is_one_round_trip_and_hears_a_channels_redis_sender(layers, monkeypatch):
    """channels-redis backs a popped message up before handing it over (and restores and
    empties that backup around every pop): three more round trips per message. Here a
    receive is the pop alone, for a general channel (the workers' doorbell) and for a
    process-local one (a socket's)."""
    ours, core = layers

    async def run():
        await warm(ours)
        local = await ours.new_channel()
        await core.send("tts-generate", {"type": "first"})
        await core.send(local, {"type": "first"})
        assert await ours.receive("tts-generate") == {"type": "first"}  # restores, once
        assert await ours.receive(local) == {"type": "first"}
        await core.send("tts-generate", {"type": "tts.generate", "session_id": "a"})
        await core.group_add("readers", local)
        await core.group_send("readers", {"type": "tts.chunk", "pcm": b"\x00\x01" * 100})
        await asyncio.sleep(0.05)  # the cleaner tasks of the receives above have run
        trips = round_trips(ours, monkeypatch)
        message = await ours.receive("tts-generate")
        assert message == {"type": "tts.generate", "session_id": "a"}
        assert await ours.receive(local) == {"type": "tts.chunk", "pcm": b"\x00\x01" * 100}
        await asyncio.sleep(0.05)
        assert trips == ["BZPOPMIN", "BZPOPMIN"]
        await _flush(ours, core)

    asyncio.run(run())


def test_a_message_a_channels_redis_receiver_left_backed_up_is_received(layers):
    """A channels-redis process cancelled between its pop and its hand-over leaves the
    message in the channel's backup; this layer's first receive on the channel puts it
    back, as channels-redis's own receive would."""
    ours, core = layers

    async def run():
        key = core.prefix + "tts-generate"
        backup = core._backup_channel_name(key)
        await core.send("tts-generate", {"type": "left"})
        connection = core.connection(0)
        _, member, score = await connection.bzpopmin(key, timeout=1)
        await connection.zadd(backup, {member: score})  # what core's receive does first
        assert await ours.receive("tts-generate") == {"type": "left"}
        assert await connection.exists(backup) == 0
        await _flush(ours, core)

    asyncio.run(run())


async def connections_opened(layer) -> int:
    """How many connections the Redis server has accepted so far."""
    return int((await layer.connection(0).info("stats"))["total_connections_received"])


def test_a_socket_that_closes_leaves_its_process_pop_running_and_loses_nothing(layers):
    """A socket that closes cancels the receive it may be running for its whole process;
    the pop goes on (a pop cancelled while waiting would close its Redis connection and
    could lose a message on its way), and the next receive gets what it popped."""
    ours, core = layers

    async def run():
        first, second = await ours.new_channel(), await ours.new_channel()
        await ours.group_add("warm-up", first)  # the connection a group join needs, open
        waiting = asyncio.ensure_future(ours.receive(first))
        await asyncio.sleep(0.05)  # the first socket's receive is the one popping
        opened = await connections_opened(core)
        waiting.cancel()  # that socket closes
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await core.send(second, {"type": "after", "n": 1})
        assert await asyncio.wait_for(ours.receive(second), 5) == {"type": "after", "n": 1}
        await ours.group_add("warm-up", second)
        assert await connections_opened(core) == opened  # none was closed and opened again
        await _flush(ours, core)

    asyncio.run(run())
