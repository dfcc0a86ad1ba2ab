"""The benchmark's own logic: bench/run.py's options (a count that cannot be one is an
error, not an empty run) and bench/fanout.py's model of the bundled player."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench import fanout, netdelay
from bench.run import parse_args


def test_defaults():
    args = parse_args([])
    assert args.sessions == 50 and args.sound_sessions == 20 and args.listeners == [1, 10, 100]
    assert args.memory_checkpoints == (100, 250) and args.torch_threads == 0
    quick = parse_args(["--quick"])
    assert quick.sessions == 15 and quick.sound_sessions == 3 and quick.voices == ("espeak", "tiny")


def test_counts_are_read():
    argv = ["--sessions", "7", "--sound-sessions", "2", "--listeners", "1, 5"]
    args = parse_args([*argv, "--memory-checkpoints", ""])
    assert (args.sessions, args.sound_sessions, args.listeners) == (7, 2, [1, 5])
    assert args.memory_checkpoints == ()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sessions", "0"], "--sessions: must be at least 1, got 0"),
        (["--sound-sessions", "-3"], "--sound-sessions: must be at least 1, got -3"),
        (["--full-sessions", "two"], "--full-sessions: not a whole number: 'two'"),
        (["--workers", "0"], "--workers: must be at least 1, got 0"),
        (["--torch-threads", "-1"], "--torch-threads: must be at least 0, got -1"),
        (["--listeners", "1,0,10"], "--listeners: must be at least 1, got 0"),
        (["--memory-checkpoints", "100,x"], "--memory-checkpoints: not a whole number: 'x'"),
        (["--max-minutes", "0"], "--max-minutes: must be more than 0, got 0"),
        (["--link-mbit", "0"], "--link-mbit: must be at least 0.1 and at most 100000, got 0"),
        (["--link-mbit", "fast"], "--link-mbit: not a number: 'fast'"),
        (["--path-rtt-ms", "-1"], "--path-rtt-ms: a round trip from 0 to 10000 ms"),
        (["--voices", "nope"], "unknown voice 'nope'"),
    ],
)
def test_bad_counts_exit_with_a_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def _stream(arrivals, cushions=None):
    return SimpleNamespace(arrivals=dict(enumerate(arrivals)), cushions=cushions or {})


def _row(*seconds):
    chunks = [
        SimpleNamespace(seq=i, samples=int(s * 1000), sample_rate=1000)
        for i, s in enumerate(seconds)
    ]
    return SimpleNamespace(chunks=chunks)


def test_held_player_model_runs_dry_as_the_scheduler_does():
    # The first chunk plays from 0.03 s (the lead) to 1.03 s.
    row = _row(1.0, 1.0)
    assert fanout._late_held(_stream([0.0, 0.9]), row) == (0, pytest.approx(0.03))
    # Due at 1.03 s: arriving 5 ms before is inside scheduler.js's LATE_MARGIN (10 ms).
    assert fanout._late_held(_stream([0.0, 1.025]), row)[0] == 1
    assert fanout._late_held(_stream([0.0, 1.015]), row)[0] == 0
    # Held by cushion_ms: the hold plus the 0.1 s cushion.
    assert fanout._late_held(_stream([0.0, 0.9], {0: 500}), row) == (0, pytest.approx(0.6))


def test_link_model_slow_start():
    # 150 KB (a first chunk of about 3.4 s) on a fresh connection, 80 ms round trip,
    # 100 Mbit/s: windows of 10, 20, 40 and 80 segments, one round trip each.
    sender = netdelay._Sender(netdelay.Link(100), one_way_s=0.04)
    pieces = sender.send(0.0, 150_000)
    assert sum(n for _, n in pieces) == 150_000
    assert [n for _, n in pieces] == [14_480, 28_960, 57_920, 48_640]
    assert pieces[-1][0] == pytest.approx(3 * 0.08 + 0.04 + 0.012, abs=0.002)  # + serializing
    # The window stays open while the connection is busy: the next 150 KB right after
    # goes out in one round trip's window (and the link's 12 ms of serialization).
    again = sender.send(pieces[-1][0] + 0.04, 150_000)
    assert len(again) == 1 and again[0][0] - (pieces[-1][0] + 0.04) < 0.06
    # After an idle spell of several RTOs it starts from ten segments again.
    idle = sender.send(again[-1][0] + 5.0, 150_000)
    assert idle[0][1] == netdelay.INITIAL_WINDOW


def test_link_model_bandwidth():
    # 1 Mbit/s: 125 KB take a second to serialize, whatever the window.
    sender = netdelay._Sender(netdelay.Link(1), one_way_s=0.0005)
    pieces = sender.send(0.0, 125_000)
    assert pieces[-1][0] == pytest.approx(1.0, abs=0.01)


def test_link_model_without_idle_restart():
    # net.ipv4.tcp_slow_start_after_idle=0: the window opened by the first 150 KB stays.
    sender = netdelay._Sender(netdelay.Link(100, idle_restart=False), one_way_s=0.04)
    first = sender.send(0.0, 150_000)
    later = sender.send(first[-1][0] + 5.0, 150_000)
    assert len(later) == 1
