"""Test and benchmark helpers: build Coqui VITS models offline from Coqui's own config classes,
read glibc's count of a process's heap (``malloc_info``), write texts of lengths not seen
before (``new_lengths``, ``text_of_words``), and start Debian's Chromium the same way
everywhere (``CHROMIUM``, ``CHROMIUM_ARGS``).

The weights are random, so the audio is noise with speech-like timing; what matters is that the
model loads and runs through the real ``TTS(model_path=..., config_path=...)`` path with the same
code (and, for ``full_size``, the same compute) as a trained VITS voice.
"""

from __future__ import annotations

import ctypes
import json
import random
import threading
from pathlib import Path
from typing import Any

# Debian's Chromium, for Playwright (never a downloaded browser), started quiet and offline.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)

SAMPLE_RATE = 22050
SPEAKERS = ("alice", "bob", "carol")
# English letters and punctuation: ``english_cleaners`` lowercases and expands numbers first.
CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PUNCTUATIONS = "!'(),-.:;? "

_built: dict[tuple[Path, bool, int, bool], tuple[Path, Path]] = {}
_lock = threading.Lock()


def build_vits(
    directory: Path, *, full_size: bool = False, seed: int = 0, multi_speaker: bool = False
) -> tuple[Path, Path]:
    """Write a random-weight VITS (``model.pth``, ``config.json``) into ``directory``.

    Tiny (about 1 MB) by default; ``full_size`` uses Coqui's default ``VitsArgs`` (the compute
    of a real VITS voice, about 140 MB). ``multi_speaker`` adds a speaker embedding and a
    ``speaker_ids.json`` naming ``SPEAKERS``. The same seed gives the same weights. Builds are
    cached per process and directory. Returns ``(model_path, config_path)``.
    """
    directory = Path(directory).resolve()
    key = (directory, full_size, seed, multi_speaker)
    with _lock:
        paths = _built.get(key)
        if paths is None or not all(p.is_file() for p in paths):
            paths = _build(directory, full_size=full_size, seed=seed, multi_speaker=multi_speaker)
            _built[key] = paths
        return paths


def _build(
    directory: Path, *, full_size: bool, seed: int, multi_speaker: bool
) -> tuple[Path, Path]:
    import torch
    from TTS.tts.models.vits import Vits

    directory.mkdir(parents=True, exist_ok=True)
    config = _config(directory, full_size=full_size, multi_speaker=multi_speaker)
    # Fork the RNG so that building a model does not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Vits(config)
    model_path, config_path = directory / "model.pth", directory / "config.json"
    torch.save({"model": model.state_dict()}, model_path)
    config.save_json(str(config_path))
    return model_path, config_path


def _config(directory: Path, *, full_size: bool, multi_speaker: bool) -> Any:
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.shared_configs import CharactersConfig
    from TTS.tts.configs.vits_config import VitsConfig

    if full_size:
        args, audio = _full_size_args()
    else:
        args, audio = _tiny_args()
    if multi_speaker:
        speakers_file = directory / "speaker_ids.json"
        speakers_file.write_text(json.dumps({name: i for i, name in enumerate(SPEAKERS)}))
        args.use_speaker_embedding = True
        args.speakers_file = str(speakers_file)
        args.speaker_embedding_channels = 256 if full_size else 8
    characters = CharactersConfig(
        characters_class="TTS.tts.utils.text.characters.Graphemes",
        pad="<PAD>",
        eos="<EOS>",
        bos="<BOS>",
        blank="<BLNK>",
        characters=CHARACTERS,
        punctuations=PUNCTUATIONS,
    )
    return VitsConfig(
        model_args=args,
        audio=BaseAudioConfig(**audio),
        use_phonemes=False,
        text_cleaner="english_cleaners",
        characters=characters,
        languages=["en"],
    )


def _tiny_args() -> tuple[Any, dict[str, Any]]:
    from TTS.tts.models.vits import VitsArgs

    # The decoder upsamples by prod(upsample_rates_decoder), which must equal hop_length.
    audio = {
        "sample_rate": SAMPLE_RATE,
        "fft_size": 512,
        "win_length": 512,
        "hop_length": 128,
        "do_trim_silence": False,
    }
    args = VitsArgs(
        out_channels=512 // 2 + 1,
        hidden_channels=16,
        hidden_channels_ffn_text_encoder=16,
        num_layers_text_encoder=1,
        num_layers_posterior_encoder=1,
        num_layers_flow=1,
        upsample_rates_decoder=[8, 4, 4],
        upsample_kernel_sizes_decoder=[16, 8, 8],
        upsample_initial_channel_decoder=16,
        resblock_kernel_sizes_decoder=[3],
        resblock_dilation_sizes_decoder=[[1, 3, 5]],
        use_sdp=False,
        init_discriminator=False,
    )
    return args, audio


def _full_size_args() -> tuple[Any, dict[str, Any]]:
    from TTS.tts.models.vits import VitsArgs

    # Coqui's defaults are the LJSpeech VITS architecture; the discriminator is training-only.
    audio = {"sample_rate": SAMPLE_RATE, "do_trim_silence": False}
    return VitsArgs(init_discriminator=False), audio


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # glibc's struct mallinfo2 (2.33 and later), every field a size_t
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
        + ("uordblks", "fordblks", "keepcost")
    ]


_WORDS = [
    "the",
    "keeper",
    "climbed",
    "to",
    "the",
    "lamp",
    "room",
    "at",
    "dusk",
    "and",
    "watched",
    "the",
    "grey",
    "sea",
]


def new_lengths(count: int, *, seed: int = 1) -> list[int]:
    """``count`` text lengths in words, each a different one (4 words and up: texts of 20
    characters and more), shuffled the same way for the same seed. Every length is a new
    input shape for a model, and so fills its libraries' per-shape caches."""
    lengths = list(range(4, 4 + count))
    random.Random(seed).shuffle(lengths)
    return lengths


def text_of_words(words: int) -> str:
    """A sentence of ``words`` words."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(words)) + "."


def malloc_info() -> dict[str, int] | None:
    """glibc's own count of this process's heap, in bytes: its size (``heap``), what is in
    use in it (``in_use``) and free in it (``free``: what fragmentation holds), and the
    blocks mapped on their own (``mmapped``, all in use). None without glibc 2.33 or
    later (musl, macOS)."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {
        "heap": info.arena,
        "in_use": info.uordblks,
        "free": info.fordblks,
        "mmapped": info.hblkhd,
    }
