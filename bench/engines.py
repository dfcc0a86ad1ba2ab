"""Engine benchmark: load, warm-up, first-segment latency and real-time factor.

    python bench/engines.py [--json out.json] [--skip-full-size]

Runs the tiny test VITS, a full-size random-weight VITS (the compute of a real VITS voice, built
in a temporary folder) and espeak-ng where installed; on CUDA too where CUDA is available.
RTF = synthesis time / audio duration over a fixed ~2,000-character text, sentence by sentence.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXT = (
    "The lighthouse keeper climbed the spiral stairs an hour before dusk, as she had every "
    "evening for eleven years. The wind had turned during the afternoon, and now it came in "
    "hard from the west, carrying the smell of rain and seaweed. Below her the harbour was "
    "almost empty. Two fishing boats rocked at their moorings, and a gull stood on the end of "
    "the pier, facing the weather like a small grey statue. She trimmed the wick, polished the "
    "great lens with a soft cloth, and wrote the time in the logbook in her careful, upright "
    "hand. Then she sat down on the wooden stool by the window and waited for the dark. "
    "Her brother had written again that morning. He wanted her to come and live in the city, "
    "where the streets were lit all night and nobody needed a lamp to find their way home. "
    "He said the work was lonely and the pay was poor, and that the lighthouse would be "
    "automated within a year whether she stayed or not. She had read the letter twice and "
    "then folded it into the pocket of her coat. He was right about the pay. He was probably "
    "right about the machines. But he had never stood on this gallery in a winter storm and "
    "watched a trawler find the channel by the beam she kept turning. When the first stars "
    "appeared she lit the lamp. The light swept out across the water, steady and slow, and "
    "somewhere beyond the headland a ship changed its course by a single degree. Nobody on "
    "board would ever know her name. That had never troubled her. She made a pot of tea, "
    "opened the book she had been saving for a quiet night, and listened to the rain begin "
    "against the glass. At midnight she climbed the stairs again to check the clockwork and "
    "the oil. The storm had passed to the north, and the sea was settling into long, easy "
    "swells. Far out, the lights of a ferry moved along the horizon like a slow procession of "
    "lanterns. She watched them until they were gone, then went down to sleep for four hours. "
    "In the morning the harbour master would bring the post, the bread and the news from town."
)
FIRST_SEGMENT_CHARS = 60


@dataclass
class Result:
    engine: str
    voice: str
    device: str
    torch_threads: int | None
    load_s: float
    warmup_s: float
    first_segment_s: float
    first_segment_chars: int
    synth_s: float
    audio_s: float
    rtf: float
    sentences: int


def setup_django() -> None:
    import django
    from django.conf import settings

    if importlib.util.find_spec("config.settings") is not None:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    elif not settings.configured:
        settings.configure(USE_TZ=True)
    django.setup()
    # Coqui logs every sentence at INFO; the table says what matters here.
    logging.getLogger("TTS").setLevel(logging.WARNING)


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def first_segment(text: str, limit: int = FIRST_SEGMENT_CHARS) -> str:
    """The opening of ``text`` cut at the last word boundary within ``limit`` characters."""
    head = text[: limit + 1]
    return head[: head.rfind(" ")] if " " in head else head[:limit]


def measure(
    engine: Any, voice: Any, device: str, load: Callable[[], tuple[float, float]]
) -> Result:
    load_s, warmup_s = load()
    head = first_segment(TEXT)
    started = time.perf_counter()
    engine.synthesize(head, voice)
    first_s = time.perf_counter() - started
    synth_s = audio_s = 0.0
    parts = sentences(TEXT)
    for sentence in parts:
        started = time.perf_counter()
        audio = engine.synthesize(sentence, voice)
        synth_s += time.perf_counter() - started
        audio_s += audio.samples / audio.sample_rate
    return Result(
        engine=engine.name,
        voice=voice.id,
        device=device,
        torch_threads=_torch_threads(),
        load_s=load_s,
        warmup_s=warmup_s,
        first_segment_s=first_s,
        first_segment_chars=len(head),
        synth_s=synth_s,
        audio_s=audio_s,
        rtf=synth_s / audio_s if audio_s else float("nan"),
        sentences=len(parts),
    )


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    import torch

    return torch.get_num_threads()


def bench_coqui(voice: Any, device: str) -> Result:
    from django.test import override_settings

    from tts.engines import coqui

    engine = coqui.CoquiEngine()

    def load() -> tuple[float, float]:
        engine.load(voice)
        model = coqui.loaded_model(voice)
        return model.load_s, model.warmup_s

    coqui.unload(voice)
    with override_settings(TTS_COQUI_DEVICE=device):
        try:
            return measure(engine, voice, device, load)
        finally:
            coqui.unload(voice)


def bench_espeak() -> list[Result]:
    """espeak-ng in-process (libespeak-ng, the default) and as a program per segment
    (TTS_ESPEAK_LIBRARY="")."""
    if importlib.util.find_spec("tts.engines.espeak") is None:
        print("espeak: tts.engines.espeak not found, skipped", file=sys.stderr)
        return []
    from django.test import override_settings

    from tts.engines.base import Voice
    from tts.engines.espeak import EspeakEngine

    engine = EspeakEngine()
    results = []
    for mode, library in (("library", "auto"), ("program", "")):
        voice = Voice(id=f"en-us {mode}", label="en-us", engine="espeak", name="en-us")
        available, reason = engine.availability(voice)
        if not available:
            print(f"espeak: skipped ({reason})", file=sys.stderr)
            return []

        def load(voice: Voice = voice) -> tuple[float, float]:
            started = time.perf_counter()
            engine.load(voice)
            loaded = time.perf_counter()
            engine.synthesize("Hello there.", voice)
            return loaded - started, time.perf_counter() - loaded

        with override_settings(TTS_ESPEAK_LIBRARY=library):
            results.append(measure(engine, voice, "cpu", load))
    return results


def coqui_voice(voice_id: str, directory: Path, *, full_size: bool) -> Any:
    from tts.engines.base import Voice
    from tts.testing import build_vits

    started = time.perf_counter()
    model_path, config_path = build_vits(directory, full_size=full_size)
    size_mb = model_path.stat().st_size / 1e6
    built_s = time.perf_counter() - started
    print(f"built {voice_id}: {size_mb:.1f} MB in {built_s:.1f} s", file=sys.stderr)
    return Voice(
        id=voice_id,
        label=voice_id,
        engine="coqui",
        model_path=str(model_path),
        config_path=str(config_path),
    )


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        from importlib.metadata import version

        info["coqui_tts"] = version("coqui-tts")
    except ImportError:
        info["torch"] = None
    return info


def table(results: list[Result]) -> str:
    header = (
        f"{'engine':<7} {'voice':<16} {'device':<6} {'thr':>3} {'load s':>7} {'warm s':>7} "
        f"{'first s':>8} {'audio s':>8} {'synth s':>8} {'RTF':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        threads = "-" if r.torch_threads is None else str(r.torch_threads)
        lines.append(
            f"{r.engine:<7} {r.voice:<16} {r.device:<6} {threads:>3} {r.load_s:>7.3f} "
            f"{r.warmup_s:>7.3f} {r.first_segment_s:>8.3f} {r.audio_s:>8.1f} {r.synth_s:>8.2f} "
            f"{r.rtf:>7.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results and machine info here")
    parser.add_argument("--skip-full-size", action="store_true", help="skip the full-size VITS")
    args = parser.parse_args(argv)
    setup_django()
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tts-bench-") as tmp:
        voices = [coqui_voice("coqui-tiny", Path(tmp) / "tiny", full_size=False)]
        if not args.skip_full_size:
            voices.append(coqui_voice("coqui-vits-full", Path(tmp) / "full", full_size=True))
        for voice in voices:
            for device in devices:
                results.append(bench_coqui(voice, device))
    results += bench_espeak()
    info = machine()
    print(
        f"{len(TEXT)} characters, {len(sentences(TEXT))} sentences; first segment: "
        f"{len(first_segment(TEXT))} characters; {info['cpu_count']} CPUs, torch {info['torch']}, "
        f"CUDA: {info.get('cuda') or 'none'}"
    )
    print(table(results))
    if args.json:
        payload = {
            "machine": info,
            "text_chars": len(TEXT),
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
