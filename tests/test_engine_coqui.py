"""The Coqui engine, driven through the real ``TTS(model_path=..., config_path=...)`` path with
tiny random-weight VITS models built by ``tts.testing.build_vits``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
    settings.configure()

from tts.engines import coqui  # noqa: E402
from tts.engines.base import EngineError, EngineUnavailable, Voice  # noqa: E402
from tts.engines.coqui import CoquiEngine  # noqa: E402
from tts.testing import SAMPLE_RATE, SPEAKERS, build_vits, malloc_info  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog."
LJSPEECH = "tts_models/en/ljspeech/vits"
XTTS = "tts_models/multilingual/multi-dataset/xtts_v2"


@pytest.fixture(scope="session")
def tiny_voice(tmp_path_factory: pytest.TempPathFactory) -> Voice:
    model_path, config_path = build_vits(tmp_path_factory.mktemp("tiny"))
    return Voice(
        id="tiny",
        label="Tiny",
        engine="coqui",
        model_path=str(model_path),
        config_path=str(config_path),
    )


@pytest.fixture(scope="session")
def multi_voice(tmp_path_factory: pytest.TempPathFactory) -> Voice:
    model_path, config_path = build_vits(tmp_path_factory.mktemp("multi"), multi_speaker=True)
    return Voice(
        id="multi",
        label="Multi",
        engine="coqui",
        model_path=str(model_path),
        config_path=str(config_path),
    )


@pytest.fixture
def engine() -> CoquiEngine:
    return CoquiEngine()


def test_it_synthesizes_16_bit_pcm_at_the_model_sample_rate(engine, tiny_voice):
    audio = engine.synthesize(TEXT, tiny_voice)

    assert audio.sample_rate == SAMPLE_RATE
    assert audio.samples > 0
    assert len(audio.pcm) == 2 * audio.samples
    assert audio.pcm.strip(b"\x00")


def test_it_gives_the_same_audio_for_the_same_text_and_seed(engine, tiny_voice):
    assert engine.synthesize(TEXT, tiny_voice) == engine.synthesize(TEXT, tiny_voice)


def test_the_same_seed_builds_the_same_model(engine, tiny_voice, tmp_path):
    model_path, config_path = build_vits(tmp_path)
    twin = Voice(
        id="twin",
        label="Twin",
        engine="coqui",
        model_path=str(model_path),
        config_path=str(config_path),
    )

    assert engine.synthesize(TEXT, twin) == engine.synthesize(TEXT, tiny_voice)


def test_it_removes_exactly_the_padding_coqui_appends(engine, tiny_voice):
    import numpy as np
    import torch
    from TTS.utils.synthesizer import PAD_SILENCE_SAMPLES

    audio = engine.synthesize(TEXT, tiny_voice)
    torch.manual_seed(0)
    raw = coqui.loaded_model(tiny_voice).synthesizer.tts(TEXT, split_sentences=False)

    assert len(raw) == audio.samples + PAD_SILENCE_SAMPLES
    expected = np.round(np.clip(np.asarray(raw[: audio.samples]), -1, 1) * 32767).astype("<i2")
    assert audio.pcm == expected.tobytes()
    assert np.frombuffer(audio.pcm, "<i2")[-PAD_SILENCE_SAMPLES:].any()


def test_it_loads_each_model_once_per_process(engine, tiny_voice):
    engine.load(tiny_voice)
    first = coqui.loaded_model(tiny_voice)
    engine.load(tiny_voice)
    CoquiEngine().load(tiny_voice)

    assert first is not None
    assert coqui.loaded_model(tiny_voice) is first
    assert first.load_s > 0 and first.warmup_s > 0


@pytest.mark.parametrize("text", ["", "   ", "...", "?!"])
def test_text_with_nothing_to_say_gives_empty_audio(engine, tiny_voice, text):
    audio = engine.synthesize(text, tiny_voice)

    assert audio.pcm == b""
    assert audio.sample_rate == SAMPLE_RATE


def test_a_faster_voice_gives_shorter_audio(engine, tiny_voice):
    normal = engine.synthesize(TEXT, tiny_voice)
    fast = engine.synthesize(TEXT, replace(tiny_voice, speed=2.0))

    assert 0 < fast.samples < normal.samples


def test_a_missing_model_file_is_unavailable_with_the_reason(engine, tmp_path):
    voice = Voice(
        id="gone",
        label="Gone",
        engine="coqui",
        model_path=str(tmp_path / "model.pth"),
        config_path=str(tmp_path / "config.json"),
    )

    available, reason = engine.availability(voice)

    assert not available
    assert str(tmp_path / "model.pth") in reason
    with pytest.raises(EngineUnavailable):
        engine.load(voice)


def test_a_model_name_not_in_the_cache_is_unavailable_with_the_fix(engine, tmp_path):
    voice = Voice(id="lj", label="LJ", engine="coqui", model=LJSPEECH)

    with override_settings(TTS_COQUI_CACHE_DIR=str(tmp_path)):
        available, reason = engine.availability(voice)

    assert not available
    assert f"python manage.py tts_models --download {LJSPEECH}" in reason


def test_a_model_name_in_the_cache_is_available(engine, tmp_path):
    folder = tmp_path / "tts" / LJSPEECH.replace("/", "--")
    folder.mkdir(parents=True)
    (folder / "model_file.pth").write_bytes(b"")
    (folder / "config.json").write_text("{}")
    voice = Voice(id="lj", label="LJ", engine="coqui", model=LJSPEECH)

    with override_settings(TTS_COQUI_CACHE_DIR=str(tmp_path)):
        assert engine.availability(voice) == (True, "")


def test_a_cached_model_name_loads_from_the_cache_without_a_network(
    engine, tiny_voice, tmp_path, monkeypatch
):
    def unreachable(*args, **kwargs):
        raise AssertionError("no connection expected")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    folder = tmp_path / "tts" / LJSPEECH.replace("/", "--")
    folder.mkdir(parents=True)
    shutil.copy(tiny_voice.model_path, folder / "model_file.pth")
    shutil.copy(tiny_voice.config_path, folder / "config.json")
    voice = Voice(id="lj", label="LJ", engine="coqui", model=LJSPEECH)

    try:
        with override_settings(TTS_COQUI_CACHE_DIR=str(tmp_path)):
            audio = engine.synthesize(TEXT, voice)
        assert audio == engine.synthesize(TEXT, tiny_voice)
        assert engine.model_id(voice) == LJSPEECH
    finally:
        coqui.unload(voice)


class _Connection:
    def close(self) -> None:
        pass


def test_download_model_fills_the_cache_through_coquis_manager(
    engine, tiny_voice, tmp_path, monkeypatch
):
    from TTS.utils.manage import ModelManager

    def fake_download(manager, item, output_path):
        shutil.copy(tiny_voice.model_path, output_path / "model_file.pth")
        shutil.copy(tiny_voice.config_path, output_path / "config.json")

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: _Connection())
    monkeypatch.setattr(ModelManager, "_download_github_model", fake_download)
    voice = Voice(id="lj", label="LJ", engine="coqui", model=LJSPEECH)

    with override_settings(TTS_COQUI_CACHE_DIR=str(tmp_path)):
        folder = coqui.download_model(LJSPEECH)
        assert engine.availability(voice) == (True, "")
        assert coqui.is_model_cached(LJSPEECH)

    assert folder == tmp_path / "tts" / LJSPEECH.replace("/", "--")


def test_a_failed_download_leaves_no_partial_model(engine, tmp_path, monkeypatch):
    import requests
    from TTS.utils.manage import ModelManager

    def broken_download(manager, item, output_path):
        (output_path / "vits.zip").write_bytes(b"partial")
        raise requests.ConnectionError("connection reset")

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: _Connection())
    monkeypatch.setattr(ModelManager, "_download_github_model", broken_download)
    folder = tmp_path / "tts" / LJSPEECH.replace("/", "--")
    folder.mkdir(parents=True)
    (folder / "vits.zip").write_bytes(b"left by an interrupted download")

    with override_settings(TTS_COQUI_CACHE_DIR=str(tmp_path)):
        available, _ = engine.availability(
            Voice(id="lj", label="LJ", engine="coqui", model=LJSPEECH)
        )
        with pytest.raises(EngineUnavailable, match="connection reset"):
            coqui.download_model(LJSPEECH)

    assert not available
    assert not folder.exists()


def test_an_unknown_model_name_is_unavailable(engine):
    voice = Voice(id="x", label="X", engine="coqui", model="tts_models/xx/nothing/vits")

    available, reason = engine.availability(voice)

    assert not available
    assert "not a Coqui model name" in reason


def test_loading_without_a_network_fails_fast_and_clearly(engine, tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    voice = Voice(id="lj", label="LJ", engine="coqui", model=LJSPEECH)

    with (
        override_settings(TTS_COQUI_CACHE_DIR=str(tmp_path)),
        pytest.raises(EngineUnavailable) as caught,
    ):
        engine.load(voice)

    assert "unreachable" in caught.value.message
    assert f"tts_models --download {LJSPEECH}" in caught.value.message
    assert caught.value.code == "voice_unavailable"
    assert not (tmp_path / "tts" / LJSPEECH.replace("/", "--")).exists()


def test_xtts_needs_the_licence_setting(engine, monkeypatch):
    monkeypatch.delenv("COQUI_TOS_AGREED", raising=False)
    voice = Voice(id="xtts", label="XTTS", engine="coqui", model=XTTS)

    with override_settings(TTS_COQUI_AGREE_LICENSE=False):
        available, reason = engine.availability(voice)
        with pytest.raises(EngineUnavailable):
            engine.load(voice)

    assert not available
    assert "TTS_COQUI_AGREE_LICENSE" in reason
    assert "COQUI_TOS_AGREED" not in os.environ


def test_a_local_xtts_config_is_read_again_when_it_changes(engine, tiny_voice, tmp_path):
    config_path = tmp_path / "config.json"
    config = json.loads(Path(tiny_voice.config_path).read_text())
    config_path.write_text(json.dumps(config))
    model_path = Path(shutil.copy(tiny_voice.model_path, tmp_path / "model.pth"))
    voice = replace(
        tiny_voice, id="local", model_path=str(model_path), config_path=str(config_path)
    )

    with override_settings(TTS_COQUI_AGREE_LICENSE=False):
        assert engine.availability(voice) == (True, "")
        assert engine.availability(voice) == (True, "")  # from what was read
        config_path.write_text(json.dumps({**config, "model": "xtts"}))
        available, reason = engine.availability(voice)

    assert not available
    assert "TTS_COQUI_AGREE_LICENSE" in reason


def test_coqui_not_installed_is_looked_for_again(engine, tiny_voice, tmp_path, monkeypatch):
    import importlib.util

    model_path = Path(shutil.copy(tiny_voice.model_path, tmp_path / "model.pth"))
    voice = replace(tiny_voice, id="local", model_path=str(model_path))  # not loaded here
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(coqui, "_found_packages", False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    available, reason = engine.availability(voice)

    assert not available
    assert "coqui-tts is not installed" in reason
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)  # installed meanwhile
    assert engine.availability(voice) == (True, "")


def test_availability_does_not_import_torch(tiny_voice):
    script = (
        "import sys\n"
        "from tts.engines.base import Voice\n"
        "from tts.engines.coqui import CoquiEngine\n"
        f"voice = Voice(id='t', label='T', engine='coqui', model_path={tiny_voice.model_path!r},"
        f" config_path={tiny_voice.config_path!r})\n"
        "assert CoquiEngine().availability(voice) == (True, '')\n"
        f"lj = Voice(id='l', label='L', engine='coqui', model={LJSPEECH!r})\n"
        "CoquiEngine().availability(lj)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr


def test_multi_speaker_models_expose_their_speakers_as_voices(engine, multi_voice):
    expanded = coqui.expand_voice(multi_voice)

    assert [v.id for v in expanded] == [f"multi:{name}" for name in SPEAKERS]
    assert [v.speaker for v in expanded] == list(SPEAKERS)
    assert all(v.engine == "coqui" and v.model_path == multi_voice.model_path for v in expanded)

    engine.load(multi_voice)
    discovered = {v.id for v in engine.discover_voices()}
    assert {v.id for v in expanded} <= discovered


def test_each_speaker_has_its_own_voice(engine, multi_voice):
    alice, bob = coqui.expand_voice(multi_voice)[:2]

    assert engine.synthesize(TEXT, alice) != engine.synthesize(TEXT, bob)


def test_an_unknown_speaker_is_an_engine_error(engine, multi_voice):
    voice = replace(multi_voice, speaker="nobody")

    with pytest.raises(EngineError) as caught:
        engine.synthesize(TEXT, voice)

    assert caught.value.code == "unknown_speaker"


def test_a_voice_with_a_speaker_is_not_expanded(multi_voice):
    voice = replace(multi_voice, speaker="bob")

    assert coqui.expand_voice(voice) == [voice]


def test_a_single_speaker_voice_expands_to_itself(tiny_voice):
    assert coqui.expand_voice(tiny_voice) == [tiny_voice]


def test_a_multi_lingual_config_expands_to_speakers_and_languages(tmp_path):
    # A YourTTS-style config written on another machine: its files moved next to it.
    clips = {
        "c1": {"name": "female-en-5"},
        "c2": {"name": "male-pt-3"},
        "c3": {"name": "male-pt-3"},
    }
    (tmp_path / "speakers.json").write_text(json.dumps(clips))
    (tmp_path / "language_ids.json").write_text(json.dumps({"en": 0, "fr-fr": 1, "pt-br": 2}))
    config = {
        "model": "vits",
        "use_d_vector_file": True,
        "d_vector_file": ["/elsewhere/speakers.json"],
        "model_args": {
            "use_language_embedding": True,
            "language_ids_file": "/elsewhere/language_ids.json",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.pth").write_bytes(b"")
    voice = Voice(
        id="yourtts",
        label="YourTTS",
        engine="coqui",
        model_path=str(tmp_path / "model.pth"),
        config_path=str(tmp_path / "config.json"),
    )

    expanded = coqui.expand_voice(voice)

    assert [v.id for v in expanded] == [
        "yourtts:female-en-5@en",
        "yourtts:female-en-5@fr-fr",
        "yourtts:female-en-5@pt-br",
        "yourtts:male-pt-3@en",
        "yourtts:male-pt-3@fr-fr",
        "yourtts:male-pt-3@pt-br",
    ]
    assert expanded[4].language == "fr-fr" and expanded[4].speaker == "male-pt-3"


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [("fr-fr", "fr-fr"), ("FR_fr", "fr-fr"), ("fr-ca", "fr-fr"), ("pt", "pt-br"), ("de", None)],
)
def test_voice_languages_match_model_languages(wanted, expected):
    assert coqui._match_language(wanted, ["en", "fr-fr", "pt-br"]) == expected


@pytest.mark.parametrize("name", coqui.SHAPE_CACHE_VARIABLES)
def test_the_shape_caches_are_capped_unless_the_environment_says_otherwise(
    monkeypatch, settings, name
):
    for variable in coqui.SHAPE_CACHE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    settings.TTS_ONEDNN_CACHE_CAPACITY = 32
    coqui._cap_primitive_cache()
    assert os.environ[name] == "32"
    (other,) = set(coqui.SHAPE_CACHE_VARIABLES) - {name}
    monkeypatch.delenv(other)
    monkeypatch.setenv(name, "500")
    coqui._cap_primitive_cache()
    assert os.environ[name] == "500"
    assert os.environ[other] == "32"  # the other cache is capped all the same
    monkeypatch.delenv(name)
    settings.TTS_ONEDNN_CACHE_CAPACITY = 0
    coqui._cap_primitive_cache()
    assert name not in os.environ


@pytest.mark.parametrize("wanted", [False, True])
def test_cudnn_follows_its_setting_on_cuda_and_is_left_alone_on_cpu(monkeypatch, settings, wanted):
    """cuDNN plans every convolution anew for each text length (P84): off on CUDA unless
    TTS_COQUI_CUDNN turns it on; a CPU model leaves torch's switch as it was."""
    import torch

    monkeypatch.setattr(torch.backends.cudnn, "enabled", not wanted)  # restored after
    settings.TTS_COQUI_CUDNN = wanted
    coqui._configure_cudnn(torch, "cpu")
    assert torch.backends.cudnn.enabled is (not wanted)
    coqui._configure_cudnn(torch, "cuda:0")
    assert torch.backends.cudnn.enabled is wanted


def test_cudnn_is_off_on_cuda_where_nothing_says_otherwise(monkeypatch, settings):
    import torch

    monkeypatch.setattr(torch.backends.cudnn, "enabled", True)  # restored after
    del settings.TTS_COQUI_CUDNN
    coqui._configure_cudnn(torch, "cuda")
    assert torch.backends.cudnn.enabled is False


def test_a_model_load_sets_cudnn_for_the_device_it_loads_on(monkeypatch, tiny_voice):
    import torch

    devices = []
    real = coqui._configure_cudnn
    monkeypatch.setattr(coqui, "_configure_cudnn", lambda t, d: (devices.append(d), real(t, d)))
    coqui.unload(tiny_voice)
    try:
        coqui.CoquiEngine().load(tiny_voice)
    finally:
        coqui.unload(tiny_voice)
    assert devices == [coqui._device(torch)]


def _run_with_model(script: str, voice: Voice, env: dict[str, str]):
    """``script`` in a Python process of its own (the project's root as its folder), given
    the model and config paths of ``voice`` as its arguments."""
    return subprocess.run(
        [sys.executable, "-c", script, voice.model_path, voice.config_path],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


MEMORY_SCRIPT = """
import sys
import django
django.setup()
from tts.engines.base import Voice
from tts.engines.coqui import CoquiEngine
from tts.testing import malloc_info, new_lengths, text_of_words

voice = Voice(id="t", label="T", engine="coqui", model_path=sys.argv[1], config_path=sys.argv[2])
engine = CoquiEngine()
engine.load(voice)
def in_use():  # in the heap, and in blocks of their own
    info = malloc_info()
    return info["in_use"] + info["mmapped"]
lengths = new_lengths(60)  # in words: texts of 20 to 330 characters
for n in lengths[:10]:  # the caches filled
    engine.synthesize(text_of_words(n), voice)
before = in_use()
for n in lengths[10:]:  # fifty texts, each of a length not seen before
    engine.synthesize(text_of_words(n), voice)
print((in_use() - before) / 2**20)
"""


@pytest.mark.skipif(malloc_info() is None, reason="needs glibc's mallinfo2 (2.33 or later)")
def test_a_worker_does_not_grow_with_every_new_text_length(tiny_voice):
    """The caches that CPU inference keeps per input shape are capped (P10, P75): fifty
    texts of new lengths leave the heap in use as it was, give or take a few MB. Without
    the caps (TTS_ONEDNN_CACHE_CAPACITY=0) it grew by about 53 MB here."""
    unset = {*coqui.SHAPE_CACHE_VARIABLES, "LD_PRELOAD"}  # (another malloc counts otherwise)
    env = {k: v for k, v in os.environ.items() if k not in unset} | {
        "TTS_ONEDNN_CACHE_CAPACITY": "32",
        "TTS_TORCH_THREADS": "1",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    result = _run_with_model(MEMORY_SCRIPT, tiny_voice, env)

    assert result.returncode == 0, result.stderr
    grew_mb = float(result.stdout.split()[-1])
    assert grew_mb < 4, f"the heap grew by {grew_mb:.1f} MB over fifty new text lengths"


THREADS_SCRIPT = """
import sys, threading
import django
django.setup()
import torch
from tts.engines.base import Voice
from tts.engines.coqui import CoquiEngine

plain = Voice(id="t", label="T", engine="coqui", model_path=sys.argv[1], config_path=sys.argv[2])
heavy = Voice(id="h", label="H", engine="coqui", model_path=sys.argv[1],
              config_path=sys.argv[2], options={"torch_threads": 2})
engine = CoquiEngine()
engine.load(plain)
seen = []
def work():  # as a worker's engine thread does: every synthesis on one thread of its own
    for voice in (plain, heavy, plain):
        assert engine.synthesize("The lamp was lit at dusk.", voice).pcm
        seen.append(torch.get_num_threads())
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(*seen)
"""


def test_a_voice_may_synthesize_on_more_threads_than_the_workers_share(tiny_voice):
    """options.torch_threads sizes the intra-op pool for that voice's synthesis, on the
    thread that synthesizes, and a voice without it goes back to TTS_TORCH_THREADS (P82)."""
    env = os.environ | {"TTS_TORCH_THREADS": "1", "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = _run_with_model(THREADS_SCRIPT, tiny_voice, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["1", "2", "1"]  # (logs come first)


@pytest.mark.parametrize("value", ["2", -1, 1.5, True])
def test_a_bad_thread_count_is_refused_with_its_reason(value):
    voice = Voice(id="odd", label="Odd", engine="coqui", options={"torch_threads": value})
    with pytest.raises(ImproperlyConfigured, match="options.torch_threads must be a whole number"):
        coqui.voice_threads(voice)


def test_a_bad_thread_count_stops_the_load_before_the_model(engine, tiny_voice):
    voice = replace(tiny_voice, id="odd", options={"torch_threads": -2})
    with pytest.raises(ImproperlyConfigured, match="not -2"):
        engine.load(voice)


def test_options_that_are_not_an_object_are_refused():
    voice = Voice(id="odd", label="Odd", engine="coqui", options=None)
    with pytest.raises(ImproperlyConfigured, match="options must be an object"):
        coqui.voice_threads(voice)


def _local_voice_options(tmp_path: Path, **environ: str) -> subprocess.CompletedProcess:
    """The settings' local Coqui voice's options, read in a fresh process with ``environ``."""
    root = Path(__file__).resolve().parent.parent
    script = "from config import settings; print(settings.TTS_VOICES[-1]['options'])"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_COQUI_")}
    env |= {"TTS_COQUI_MODEL_PATH": str(tmp_path / "model.pth"), **environ}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True
    )


def test_the_local_coqui_voice_takes_its_thread_count_from_the_environment(tmp_path):
    result = _local_voice_options(tmp_path, TTS_COQUI_TORCH_THREADS="4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'torch_threads': 4}"


def test_the_local_coqui_voice_takes_its_own_cut_from_the_environment(tmp_path):
    """Only where set: without them its narrations keep the keys they had (P83)."""
    result = _local_voice_options(
        tmp_path, TTS_COQUI_FIRST_SEGMENT_CHARS="30", TTS_COQUI_SEGMENT_GROWTH="1.25"
    )
    assert result.returncode == 0, result.stderr
    options = "{'torch_threads': 0, 'first_segment_chars': 30, 'segment_growth': 1.25}"
    assert result.stdout.strip() == options
    refused = _local_voice_options(tmp_path, TTS_COQUI_FIRST_SEGMENT_CHARS="5")
    assert refused.returncode != 0
    assert "TTS_COQUI_FIRST_SEGMENT_CHARS must be at least 10, got 5" in refused.stderr
