"""The blocking baseline: a tiny HTTP server that answers the way Coqui's own `tts-server`
does (TTS/server/server.py, ``/api/tts``): synthesize the whole text in one go, then send
the whole WAV. Same engine, same model files, same torch threads, same device (and cuDNN
switch) as the workers.

    python -m bench.baseline --port 8123 --engine coqui --model-path M --config-path C
    python -m bench.baseline --port 8123 --engine espeak --name en-us

POST /api/tts with the text as the body -> 200 audio/wav (Content-Length set).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Synthesize = Callable[[str], bytes]  # text -> a WAV file


def coqui_synthesizer(model_path: str, config_path: str) -> Synthesize:
    import torch
    from TTS.api import TTS

    from tts.engines import coqui

    threads = int(os.environ.get("BENCH_BASELINE_THREADS") or 0)
    threads = threads or int(os.environ.get("TTS_TORCH_THREADS") or 0)
    if threads:
        torch.set_num_threads(threads)
    device = coqui._device(torch)  # TTS_COQUI_DEVICE, as the workers read it
    coqui._configure_cudnn(torch, device)
    api = TTS(model_path=model_path, config_path=config_path, progress_bar=False).to(device)

    def synthesize(text: str) -> bytes:
        # As tts-server: api.tts (sentence splitting inside), then save_wav of the whole.
        # inference_mode and a fixed seed match the worker; they only make this side faster.
        with torch.inference_mode():
            torch.manual_seed(0)
            wav = api.tts(text)
        out = io.BytesIO()
        api.synthesizer.save_wav(wav, out)
        return out.getvalue()

    return synthesize


def espeak_synthesizer(name: str) -> Synthesize:
    from tts.audio import wav_bytes
    from tts.engines.base import Voice
    from tts.engines.espeak import EspeakEngine

    engine, voice = EspeakEngine(), Voice(id=name, label=name, engine="espeak", name=name)

    def synthesize(text: str) -> bytes:
        audio = engine.synthesize(text, voice)  # the whole text in one synthesis
        return wav_bytes(audio.pcm, audio.sample_rate)

    return synthesize


def serve(port: int, synthesize: Synthesize) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            text = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            started = time.perf_counter()
            body = synthesize(text)
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Synthesis-Ms", f"{(time.perf_counter() - started) * 1000:.1f}")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine", choices=["coqui", "espeak"], required=True)
    parser.add_argument("--model-path")
    parser.add_argument("--config-path")
    parser.add_argument("--name", default="en-us")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()  # the workers' settings: the Coqui device, cuDNN, espeak's library
    if args.engine == "coqui":
        synthesize = coqui_synthesizer(args.model_path, args.config_path)
    else:
        synthesize = espeak_synthesizer(args.name)
    synthesize("Hello there.")  # warm, like the workers
    serve(args.port, synthesize)


if __name__ == "__main__":
    main()
