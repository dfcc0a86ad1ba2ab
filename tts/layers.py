"""channels-redis's core layer, with fewer trips to Redis per message.

channels-redis 4 makes four round trips for a ``send`` (drop expired messages, count,
add, set the expiry), four for a ``group_send`` (drop expired members, list them,
drop expired messages in a pipeline, add in a script) and two for a ``group_add`` (add,
set the expiry). Every POST sends one (the workers' doorbell), every socket joins its
session's group, and every chunk is a group_send, each on its path to first audio.

``RedisChannelLayer`` here does the same work in Lua: a ``send`` and a ``group_add`` are
one round trip each, a ``group_send`` two the first time a process sends to a group (the
members, then one script per Redis server that checks capacity, drops expired messages
and adds the message for each member's channel), and one after that on a layer of one
Redis server: the process keeps each group's members as its last send found them, and
one script sends to those still in the group and lists the group as it is now; a member
that joined since gets its message in a second trip. A group's first send is one trip too
when its members were named ahead (``expect_members``: a worker's doorbell names the
session's sockets that its web process holds). What is stored,
and where, is exactly what channels-redis stores (the same keys, scores, expiries and
serialized messages, ``__asgi_channel__`` included), so processes on either class talk
to each other (a rolling deploy). Sharding over several hosts and Sentinel work as in
channels-redis: the connections are its own.

Receiving, channels-redis backs every popped message up in a second sorted set before
it hands it over (and restores such backups before every pop, and empties the backup
after): three more round trips per message, one of them between the message's arrival
and its delivery (the workers' doorbell on every session's way to first audio; every
chunk on its way to a socket). Here a receive is the pop alone: once its reply is read
nothing is awaited before the message is returned, so there is no moment left for a
cancellation to lose it in. On a web process's own channel (its sockets') the pop runs
as a task of its own that a caller's cancellation does not stop (a socket that closes
cancels the receive it may be running for the whole process): its message goes to the
next receive, where a pop cancelled while it waits would lose it, and its Redis
connection with it. Backups that a channels-redis process left behind are restored at
this layer's first receive on a channel.

    CHANNEL_LAYERS = {"default": {"BACKEND": "tts.layers.RedisChannelLayer", ...}}
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer as CoreRedisChannelLayer

from tts import redis_client

logger = logging.getLogger("channels_redis.core")  # where channels-redis logs the same

# What channels-redis does to store one message on a channel's key, in one function that
# every script below begins with: drop the key's expired messages, refuse when it holds
# ``capacity``, else add the message and renew the key's expiry. Returns 1 when the
# channel was full (nothing added), else 0.
STORE_LUA = """
local function store(key, message, capacity, now, expired, expiry)
    redis.call('ZREMRANGEBYSCORE', key, 0, expired)
    if redis.call('ZCOUNT', key, '-inf', '+inf') >= tonumber(capacity) then
        return 1
    end
    redis.call('ZADD', key, now, message)
    redis.call('EXPIRE', key, expiry)
    return 0
end
"""

# KEYS[1]: the channel's key. ARGV: message, capacity, now, expired-before, expiry (s).
# Returns 1 when the channel is full (nothing added), else 0.
SEND_LUA = (
    STORE_LUA
    + """
return store(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""
)

# KEYS[1]: the group's key. ARGV: the member, the time, the group's expiry (s).
GROUP_ADD_LUA = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""

# KEYS[1]: the group's key. ARGV[1]: members added before this have expired.
MEMBERS_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: n channel keys. ARGV: n messages, n capacities, now, expired-before, expiry (s).
# Returns how many channels were full (their message dropped, as channels-redis does).
GROUP_SEND_LUA = (
    STORE_LUA
    + """
local n = #KEYS
local now, expired, expiry = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local over_capacity = 0
for i = 1, n do
    over_capacity = over_capacity + store(KEYS[i], ARGV[i], ARGV[n + i], now, expired, expiry)
end
return over_capacity
"""
)

# GROUP_SEND_LUA to the members a process knows of, and the group's members as they are now,
# in one trip. KEYS[1]: the group's key; KEYS[2..n+1]: channel keys. ARGV: members added
# before ARGV[1] have expired; now, expired-before, expiry; n messages; n capacities; n
# counts of the member channels each message names; then those names. A channel key's
# message goes out only if every member it names is still in the group (else it would
# reach a process for a member that left): the caller sends it again to those that are.
# Returns {channels over capacity, the indexes (1..n) of keys skipped, the members}.
KNOWN_GROUP_SEND_LUA = (
    STORE_LUA
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
local n = #KEYS - 1
local now, expired, expiry = ARGV[2], ARGV[3], ARGV[4]
local over_capacity, skipped = 0, {}
local name = 5 + 3 * n
for i = 1, n do
    local present = true
    for _ = 1, tonumber(ARGV[4 + 2 * n + i]) do
        if present and not redis.call('ZSCORE', KEYS[1], ARGV[name]) then
            present = false
        end
        name = name + 1
    end
    if not present then
        skipped[#skipped + 1] = i
    else
        over_capacity = over_capacity
            + store(KEYS[i + 1], ARGV[4 + i], ARGV[4 + n + i], now, expired, expiry)
    end
end
return {over_capacity, skipped, redis.call('ZRANGE', KEYS[1], 0, -1)}
"""
)

KNOWN_GROUPS = 1024  # groups whose members a process keeps (the ones it sent to last)


# channels-redis's own (RedisChannelLayer._brpop_with_clean): back into the channel with
# whatever a receive backed up and never handed over. ARGV: the channel's key, its backup's.
RESTORE_LUA = """
local backed_up = redis.call('ZRANGE', ARGV[2], 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
    redis.call('ZADD', ARGV[1], backed_up[i], backed_up[i - 1])
end
redis.call('DEL', ARGV[2])
"""


def _failed(task: asyncio.Task) -> bool:
    """A pop that ended without a message (its connection failed, or it was stopped)."""
    return task.done() and (task.cancelled() or task.exception() is not None)


class RedisChannelLayer(CoreRedisChannelLayer):
    """channels-redis's core layer; ``send`` and ``group_add`` in one round trip,
    ``group_send`` in two the first time (one after that, or when its members were named
    ahead, on one Redis server), and ``send_blocking`` for sync code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._blocking_sends: dict[int, Any] = {}  # host index -> its send script
        self._blocking_lock = threading.Lock()
        self._restored: set[str] = set()  # channel keys whose backups were restored
        self._pops: dict[str, asyncio.Task] = {}  # this process's channel -> its pop
        # group -> its members as this process's last send to it found them (oldest first)
        self._known: dict[str, list[str]] = {}
        self._known_lock = threading.Lock()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        channel_non_local_name = channel
        if "!" in channel:  # process-local: the full name rides in the message
            message = {**message, "__asgi_channel__": channel}
            channel_non_local_name = self.non_local_name(channel)
            index = self.consistent_hash(channel)
        else:
            index = next(self._send_index_generator)
        full = await self._script(index, SEND_LUA)(
            keys=[self.prefix + channel_non_local_name], args=self._send_args(channel, message)
        )
        if full:
            raise ChannelFull()

    async def group_add(self, group: str, channel: str) -> None:
        """channels-redis's ZADD, then EXPIRE of the group's key, in one trip, not two."""
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        await self._script(self.consistent_hash(group), GROUP_ADD_LUA)(
            keys=[self._group_key(group)], args=[channel, time.time(), self.group_expiry]
        )

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert self.require_valid_group_name(group), "Group name not valid"
        if self.ring_size == 1:  # sharded, a member's channel may be on another server
            await self._send_to_known(group, self._known.get(group, []), message)
            return
        members = await self._script(self.consistent_hash(group), MEMBERS_LUA)(
            keys=[self._group_key(group)], args=[int(time.time()) - self.group_expiry]
        )
        await self._send_to([name.decode("utf8") for name in members], group, message)

    async def _send_to_known(self, group: str, known: list[str], message: dict[str, Any]) -> None:
        """On one Redis server: in one trip, the message to the members ``known`` that are
        still in the group, and the group's members; then, in a second, to those that
        joined since or whose channel key's message was held back. A group this process
        has not sent to knows none: its first send is the two trips of channels-redis's
        (the members, then the message)."""
        by_connection, messages, capacities = self._map_channel_keys_to_connection(known, message)
        channel_keys = by_connection.get(0, [])
        names = {key: [] for key in channel_keys}
        for name in known:
            names[self.prefix + (self.non_local_name(name) if "!" in name else name)].append(name)
        now = time.time()
        over_capacity, skipped, members = await self._script(0, KNOWN_GROUP_SEND_LUA)(
            keys=[self._group_key(group), *channel_keys],
            args=[
                int(now) - self.group_expiry,
                now,
                int(now) - int(self.expiry),
                int(self.expiry),
                *(messages[key] for key in channel_keys),
                *(capacities[key] for key in channel_keys),
                *(len(names[key]) for key in channel_keys),
                *(name for key in channel_keys for name in names[key]),
            ],
        )
        current = [name.decode("utf8") for name in members]
        self._remember(group, current)
        if over_capacity > 0:
            logger.info(
                "%s of %s channels over capacity in group %s", over_capacity, len(current), group
            )
        held_back = {channel_keys[i - 1] for i in skipped}
        reached = {name for key in channel_keys if key not in held_back for name in names[key]}
        if missing := [name for name in current if name not in reached]:
            await self._send_to(missing, group, message)

    def expect_members(self, group: str, members: list[Any]) -> None:
        """A group's members as another process saw them (a worker's doorbell names the
        session's sockets that the web process had joined), for a group this process has
        not sent to: its first send is then the one trip of a known group's. Only a hint:
        that send checks each member in Redis, and sends to the group as it really is. On
        a layer of several Redis servers, nothing."""
        if self.ring_size != 1:
            return
        # Valid process-local channel names only (a socket's), each once: a repeated one
        # would deliver twice.
        names = list(
            dict.fromkeys(
                name
                for name in members
                if self.match_type_and_length(name)
                and "!" in name
                and self.channel_name_regex.match(name)
            )
        )
        with self._known_lock:
            if names and group not in self._known:
                self._remember_locked(group, names)

    def _remember(self, group: str, members: list[str]) -> None:
        with self._known_lock:
            self._remember_locked(group, members)

    def _remember_locked(self, group: str, members: list[str]) -> None:
        self._known.pop(group, None)
        self._known[group] = members
        if len(self._known) > KNOWN_GROUPS:
            del self._known[next(iter(self._known))]

    async def _send_to(self, channel_names: list[str], group: str, message: dict) -> None:
        """GROUP_SEND_LUA on each Redis server, for ``channel_names`` of ``group``."""
        by_connection, messages, capacities = self._map_channel_keys_to_connection(
            channel_names, message
        )
        for index, channel_keys in by_connection.items():
            now = time.time()
            over_capacity = await self._script(index, GROUP_SEND_LUA)(
                keys=channel_keys,
                args=[
                    *(messages[key] for key in channel_keys),
                    *(capacities[key] for key in channel_keys),
                    now,
                    int(now) - int(self.expiry),
                    int(self.expiry),
                ],
            )
            if over_capacity > 0:
                logger.info(
                    "%s of %s channels over capacity in group %s",
                    over_capacity,
                    len(channel_names),
                    group,
                )

    async def _brpop_with_clean(self, index: int, channel: str, timeout: int) -> bytes | None:
        """The next message on ``channel`` (its Redis key), or None after ``timeout``: the
        pop alone."""
        connection = self.connection(index)
        if channel not in self._restored:  # what a channels-redis receiver left backed up
            await connection.eval(RESTORE_LUA, 0, channel, self._backup_channel_name(channel))
            self._restored.add(channel)
        result = await connection.bzpopmin(channel, timeout=timeout)
        return None if result is None else result[1]

    async def _clean_receive_backup(self, index: int, channel: str) -> None:
        """Nothing was backed up (see _brpop_with_clean)."""

    async def receive_single(self, channel: str) -> tuple[Any, dict[str, Any]]:
        """The next message on ``channel``; on this process's own channel (its sockets',
        ``specific.<prefix>!``) from a pop that a caller's cancellation does not stop.

        A socket that closes cancels the receive it may be running for its whole process,
        and a pop cancelled while it waits closes its Redis connection (the reply may be on
        its way): every closed socket cost a new connection (docs/benchmarks-history.md, round
        9). Here that pop goes on, and the next receive takes its message."""
        if not channel.endswith("!"):
            return await super().receive_single(channel)
        loop = asyncio.get_running_loop()
        pop = self._pops.get(channel)
        if pop is None or pop.get_loop() is not loop or _failed(pop):
            pop = self._pops[channel] = loop.create_task(self._pop(channel))
        content = await asyncio.shield(pop)  # a cancellation leaves the pop running
        self._pops.pop(channel, None)
        message = self.deserialize(content)
        if "__asgi_channel__" in message:  # as channels-redis's receive_single does
            channel = message.pop("__asgi_channel__")
        return channel, message

    async def _pop(self, channel: str) -> bytes:
        index, key = self.consistent_hash(channel), self.prefix + channel
        while True:
            content = await self._brpop_with_clean(index, key, self.brpop_timeout)
            if content is not None:
                return content

    async def flush(self) -> None:
        self._stop_pops()
        with self._known_lock:
            self._known.clear()
        await super().flush()

    async def close_pools(self) -> None:
        self._stop_pops()
        await super().close_pools()

    def _stop_pops(self) -> None:
        for pop in self._pops.values():
            pop.cancel()
        self._pops.clear()

    def send_blocking(self, channel: str, message: dict[str, Any]) -> None:
        """``send``, from sync code on the calling thread, to a channel that any process
        receives from (a worker's doorbell): the same message, on a blocking connection.
        From sync code the async send goes to an event loop's thread and back, and on a
        busy web process that hand-over took longer than the send itself (2 ms on each
        POST's way to first audio). Raises ChannelFull as ``send`` does."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "!" not in channel, "a process-local channel is sent to with send()"
        index = next(self._send_index_generator)  # any host: receivers take turns at all
        full = self._blocking_script(index)(
            keys=[self.prefix + channel], args=self._send_args(channel, message)
        )
        if full:
            raise ChannelFull()

    def load_blocking_scripts(self) -> None:
        """Load ``send_blocking``'s script on every host now, over its connection
        (``tts.warmup``): on a fresh Redis the first send would find it missing."""
        for index in range(len(self.hosts)):
            script = self._blocking_script(index)
            script.registered_client.script_load(script.script)

    async def warm_up(self) -> None:
        """Open this event loop's connection to every host and load the scripts that its
        sends run (``tts.warmup``): a worker's first broadcast would do both (P85)."""
        for index in range(self.ring_size):
            connection = self.connection(index)
            for source in (SEND_LUA, GROUP_SEND_LUA, KNOWN_GROUP_SEND_LUA, MEMBERS_LUA):
                await connection.script_load(source)

    def _send_args(self, channel: str, message: dict[str, Any]) -> list[Any]:
        """SEND_LUA's arguments: the message, the channel's capacity, the time, and where
        expiry begins."""
        now = time.time()
        return [
            self.serialize(message),
            self.get_capacity(channel),
            now,
            int(now) - int(self.expiry),
            int(self.expiry),
        ]

    def _blocking_script(self, index: int) -> Any:
        with self._blocking_lock:
            if index not in self._blocking_sends:
                client = redis_client.client_for(self.hosts[index])
                self._blocking_sends[index] = client.register_script(SEND_LUA)
            return self._blocking_sends[index]

    def _script(self, index: int, source: str) -> Any:
        """The script on connection ``index``, run by its digest (EVALSHA; redis-py loads
        it again after a Redis restart)."""
        return self.connection(index).register_script(source)
