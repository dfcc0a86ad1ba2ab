"""tts.heap: what a web or worker process builds as it starts, out of the collector's
passes (gc.freeze), in daphne (tts.serve) and in runworker."""

from __future__ import annotations

import gc
import socket
import weakref

import pytest

from tests.conftest import ARTIFACTS
from tts import heap


def test_it_is_wanted_unless_turned_off():
    assert heap.freeze_wanted({}) is True
    assert heap.freeze_wanted({"TTS_GC_FREEZE": "on"}) is True
    assert heap.freeze_wanted({"TTS_GC_FREEZE": "0"}) is False
    with pytest.raises(ValueError, match="TTS_GC_FREEZE must be a boolean"):
        heap.freeze_wanted({"TTS_GC_FREEZE": "maybe"})


def test_frozen_objects_are_left_out_of_a_full_pass_and_garbage_is_collected_first():
    class Node:
        pass

    def cycle() -> Node:
        node = Node()
        node.me = node
        return node

    before = gc.get_freeze_count()
    kept, dropped = cycle(), cycle()
    del dropped  # garbage already: collected, not frozen
    try:
        frozen, ms = heap.freeze_startup_heap()
        # another thread of this process may free a frozen object meanwhile (it leaves the
        # frozen generation), never add one: CI saw one fewer once
        assert before < frozen and gc.get_freeze_count() <= frozen and ms >= 0
        assert not any(type(o) is Node for o in gc.get_objects())  # not visited by passes
        still = weakref.ref(kept)
        del kept
        gc.collect()
        assert still() is not None  # a frozen cycle is never collected (the cost, documented)
    finally:
        gc.unfreeze()


def test_the_stacks_daphne_and_worker_freeze_their_start(live_stack):
    """Each says so in its log, with its own process id: these are this run's lines."""
    daphne = (ARTIFACTS / "logs" / "daphne.log").read_text(errors="replace")
    pid = live_stack.daphne.pid
    assert f"tts.serve: daphne (pid {pid}): " in daphne
    assert "objects of its start kept out of the collector" in daphne
    worker = (ARTIFACTS / "logs" / "worker-0.log").read_text(errors="replace")
    name = f"{socket.gethostname()}:{live_stack.worker_procs[0].pid}"
    assert f"worker {name}: " in worker and "objects of its start kept out" in worker
