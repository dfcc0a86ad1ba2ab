"""What each new text length costs a Coqui voice: every length is a new input shape.

    python bench/shapes.py [--device cpu|cuda] [--full-size] [--texts 40]
    TTS_COQUI_CUDNN=1 python bench/shapes.py --device cuda --full-size    # cuDNN on (P84)

Narrates texts of lengths not seen before, each twice in a row, and prints the synthesis
time of the first (a new shape) and of the second (the same shape again), with the heap that
the new shapes left in use (glibc's count) and, on CUDA, the GPU memory PyTorch reserved.
The libraries keep per-shape caches: oneDNN's primitives on CPU (capped by
TTS_ONEDNN_CACHE_CAPACITY) and cuDNN's execution plans on CUDA
(TORCH_CUDNN_V8_API_LRU_CACHE_LIMIT), which the engine leaves off unless TTS_COQUI_CUDNN
is set. See docs/benchmarks.md, P84.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    parser.add_argument("--full-size", action="store_true", help="the full-size VITS")
    parser.add_argument("--texts", type=int, default=40, help="new lengths to narrate (40)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.texts < 1:
        parser.error("--texts must be at least 1")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device is cpu or cuda, not {args.device!r}")

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import torch
    from django.test import override_settings

    from bench.stats import percentile
    from tts.engines.base import Voice
    from tts.engines.coqui import CoquiEngine
    from tts.testing import build_vits, malloc_info, new_lengths, text_of_words

    cuda = args.device.startswith("cuda")

    def heap_mb() -> float:
        info = malloc_info() or {"in_use": 0, "mmapped": 0}
        return (info["in_use"] + info["mmapped"]) / 2**20

    def reserved_mb() -> float:
        return torch.cuda.memory_reserved() / 2**20 if cuda else 0.0

    def timed(words: int) -> float:
        started = time.perf_counter()
        engine.synthesize(text_of_words(words), voice)  # the PCM comes back: synchronous
        return (time.perf_counter() - started) * 1000

    lengths = new_lengths(10 + args.texts)  # in words: 20 characters and up
    with (
        tempfile.TemporaryDirectory(prefix="tts-shapes-") as tmp,
        override_settings(TTS_COQUI_DEVICE=args.device),
    ):
        model, config = build_vits(Path(tmp), full_size=args.full_size)
        voice = Voice(
            id="v", label="V", engine="coqui", model_path=str(model), config_path=str(config)
        )
        engine = CoquiEngine()
        engine.load(voice)
        for words in lengths[:10]:  # the caches filled with a first few shapes
            timed(words)
        heap, reserved = heap_mb(), reserved_mb()
        new, again = [], []
        for words in lengths[10:]:
            new.append(timed(words))
            again.append(timed(words))
        figures = {
            "device": args.device,
            "model": "full-size" if args.full_size else "tiny",
            "cudnn": bool(torch.backends.cudnn.enabled) if cuda else None,
            "cudnn_lru_limit": os.environ.get("TORCH_CUDNN_V8_API_LRU_CACHE_LIMIT"),
            "onednn_capacity": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
            "texts": len(new),
            "new_shape_ms": {"p50": statistics.median(new), "p90": percentile(new, 90)},
            "same_shape_ms": {"p50": statistics.median(again), "p90": percentile(again, 90)},
            "extra_ms_per_new_shape_p50": statistics.median(
                n - a for n, a in zip(new, again, strict=True)
            ),
            "heap_growth_mb": heap_mb() - heap,
            "gpu_reserved_growth_mb": reserved_mb() - reserved,
        }
    print(
        f"{figures['model']} on {args.device}"
        + (f" (cuDNN {'on' if figures['cudnn'] else 'off'})" if cuda else "")
        + f", {len(new)} new lengths: synthesis p50 / p90 ms, new shape "
        f"{figures['new_shape_ms']['p50']:.1f} / {figures['new_shape_ms']['p90']:.1f}, "
        f"same shape again {figures['same_shape_ms']['p50']:.1f} / "
        f"{figures['same_shape_ms']['p90']:.1f} (extra per new shape p50 "
        f"{figures['extra_ms_per_new_shape_p50']:.1f}); heap +{figures['heap_growth_mb']:.1f} MB"
        + (f", GPU reserved +{figures['gpu_reserved_growth_mb']:.0f} MB" if cuda else "")
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
