"""PCM helpers (tts.audio)."""

from __future__ import annotations

from tts.audio import FIRST_PART_BYTES, chunk_frame, pcm_parts


def test_pcm_parts_grow_from_the_first_window_and_join_a_short_rest():
    first = FIRST_PART_BYTES
    sizes = {n: [len(p) for p in pcm_parts(bytes(n))] for n in (0, 100, first, first + 2)}
    # The first part stays within the window, however little is left after it.
    assert sizes == {0: [0], 100: [100], first: [first], first + 2: [first, 2]}
    assert [len(p) for p in pcm_parts(bytes(3 * first))] == [first, 2 * first]
    # Rests shorter than half the next part's size join the part before.
    assert [len(p) for p in pcm_parts(bytes(4 * first))] == [first, 3 * first]
    assert [len(p) for p in pcm_parts(bytes(7 * first))] == [first, 2 * first, 4 * first]
    pcm = bytes(range(256)) * 2600  # 650 KB: a long sentence of a full-size voice
    parts = pcm_parts(pcm)
    assert b"".join(parts) == pcm
    assert [len(p) for p in parts[:-1]] == [first * 2**i for i in range(len(parts) - 1)]
    assert 0 < len(parts[-1]) < 3 * len(parts[-2])


def test_a_parts_frame_is_its_seq_then_its_bytes():
    part = pcm_parts(bytes(range(200)) * 300)[1]
    frame = chunk_frame(7, part)
    assert frame[:4] == b"\x07\x00\x00\x00" and frame[4:] == bytes(part)
