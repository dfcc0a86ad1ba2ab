"""The Coqui engine: ``coqui-tts`` models by name (from Coqui's cache) or by local files.

torch and TTS are imported lazily, inside functions: the web process lists voices and checks
their availability without importing torch. A worker loads each model once (``get_model``); the
module-level registry holds one instance per process per model name or model path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies

from django.core.exceptions import ImproperlyConfigured

from .base import Audio, Engine, EngineError, EngineUnavailable, Voice, file_signature

logger = logging.getLogger(__name__)

DOWNLOAD_COMMAND = "python manage.py tts_models --download {name}"
LIST_COMMAND = "python manage.py tts_models"
INSTALL_COMMAND = "pip install -r requirements.txt"
LICENSE_SETTING = "TTS_COQUI_AGREE_LICENSE"
WARMUP_TEXT = "Hello there."
CONNECT_TIMEOUT_S = 5.0
HF_ENDPOINT = "https://huggingface.co"
FAIRSEQ_URL = "https://dl.fbaipublicfiles.com/mms/tts/"

_registry: dict[str, LoadedModel] = {}
_registry_lock = threading.Lock()
# torch's RNG is process-global: one synthesis at a time keeps seeded output reproducible.
_inference_lock = threading.Lock()


# Settings ---------------------------------------------------------------------------------------


def _setting(name: str, default: Any) -> Any:
    """A Django setting, or ``default`` where Django is not configured (scripts, benchmarks)."""
    from django.conf import settings

    try:
        return getattr(settings, name, default)
    except ImproperlyConfigured:
        return default


def _license_agreed() -> bool:
    return bool(_setting(LICENSE_SETTING, False))


def cache_dir() -> Path:
    """The folder Coqui keeps downloaded models in (Hugging Face models use the HF cache).

    ``TTS_COQUI_CACHE_DIR`` means what Coqui's ``TTS_HOME`` means: models go to ``<dir>/tts/``.
    """
    configured = _setting("TTS_COQUI_CACHE_DIR", "")
    if configured:
        return Path(configured).expanduser() / "tts"
    return _coqui_default_dir()


def _coqui_default_dir() -> Path:
    # Mirrors trainer.io.get_user_data_dir("tts"), which would import torch.
    for variable in ("TTS_HOME", "XDG_DATA_HOME"):
        if value := os.environ.get(variable):
            return Path(value).expanduser().resolve(strict=False) / "tts"
    if sys.platform == "win32":
        from trainer.io import get_user_data_dir

        return get_user_data_dir("tts")
    if sys.platform == "darwin":
        return Path("~/Library/Application Support/tts").expanduser()
    return Path.home() / ".local" / "share" / "tts"


# The model catalog ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Any]:
    """Coqui's ``.models.json``, read without importing the TTS package (and torch)."""
    spec = importlib.util.find_spec("TTS")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / ".models.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _model_item(name: str) -> dict[str, Any] | None:
    """The catalog entry of a model name ``type/language/dataset/model``, or None."""
    parts = name.split("/")
    if len(parts) != 4 or not all(parts):
        return None
    model_type, language, dataset, model = parts
    if "fairseq" in name:  # Coqui builds these entries on the fly, one per MMS language.
        return {"model_type": model_type, "fairseq": True}
    item = _catalog().get(model_type, {}).get(language, {}).get(dataset, {}).get(model)
    return {**item, "model_type": model_type} if item is not None else None


def list_models() -> list[str]:
    """Names of the TTS models Coqui can download (``tts_models/<lang>/<dataset>/<model>``)."""
    catalog = _catalog().get("tts_models", {})
    return [
        f"tts_models/{language}/{dataset}/{model}"
        for language, datasets in catalog.items()
        for dataset, models in datasets.items()
        for model in models
    ]


def is_model_cached(name: str) -> bool:
    """Whether ``name`` (and its default vocoder) are in the local cache. No network."""
    item = _model_item(name)
    return item is not None and not _missing_downloads(name, item)


def _missing_downloads(name: str, item: dict[str, Any]) -> list[str]:
    missing = [] if _cached_dir(name, item) else [name]
    vocoder = item.get("default_vocoder")
    if vocoder and not _cached_dir(vocoder, _model_item(vocoder) or {}):
        missing.append(vocoder)
    return missing


def _cached_dir(name: str, item: dict[str, Any]) -> Path | None:
    if "repo_id" in item:
        return _hf_snapshot(item)
    folder = cache_dir() / name.replace("/", "--")
    # Coqui creates the folder before downloading into it: a checkpoint marks a finished one.
    if folder.is_dir() and next(folder.rglob("*.pt*"), None) is not None:
        return folder
    return None


def _hf_snapshot(item: dict[str, Any]) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            item["repo_id"],
            allow_patterns=item.get("allow"),
            ignore_patterns=item.get("ignore"),
            local_files_only=True,
        )
    except Exception:  # noqa: BLE001 - any failure here means "not in the cache"
        return None
    return Path(path)


def _is_xtts(voice: Voice) -> bool:
    if voice.model:
        return "xtts" in voice.model or bool((_model_item(voice.model) or {}).get("tos_required"))
    config = _read_config(Path(voice.config_path)) if voice.config_path else {}
    return "xtts" in str(config.get("model", ""))


def _license_reason(voice: Voice) -> str:
    return (
        f"{voice.model or voice.model_path} is licensed under the Coqui Public Model License "
        f"(non-commercial, https://tts-hub.github.io/cpml); set {LICENSE_SETTING}=True to agree"
    )


def _ensure_license(voice: Voice) -> None:
    """Tell Coqui the licence is agreed (it would otherwise prompt on stdin), or refuse."""
    if not _is_xtts(voice):
        return
    if not _license_agreed():
        raise EngineUnavailable(_license_reason(voice))
    os.environ["COQUI_TOS_AGREED"] = "1"


# Downloads --------------------------------------------------------------------------------------


def download_model(name: str, *, progress: bool = False) -> Path:
    """Download ``name`` and its default vocoder into the cache unless there; return its folder.

    Raises ``EngineUnavailable`` with a clear message when the model is unknown, its licence is
    not agreed, or the download host cannot be reached (checked first, with a short timeout).
    """
    item = _model_item(name)
    if item is None:
        raise EngineUnavailable(f"{name!r} is not a Coqui model name; `{LIST_COMMAND}` lists them")
    _ensure_license(Voice(id=name, label=name, engine="coqui", model=name))
    model_path, config_path = _fetch(name, item, progress=progress)
    vocoder = item.get("default_vocoder")
    if vocoder:
        _fetch(vocoder, _model_item(vocoder) or {}, progress=progress)
    return config_path.parent if config_path else model_path


def _fetch(name: str, item: dict[str, Any], *, progress: bool) -> tuple[Path, Path | None]:
    """(checkpoint, config) of a model, downloading it only when it is not in the cache."""
    from TTS.utils.manage import ModelManager

    if "repo_id" in item and (snapshot := _hf_snapshot(item)) is not None:
        # Coqui would ask the Hub again; the cached snapshot is enough.
        return ModelManager._find_files(snapshot)
    folder = None if "repo_id" in item else cache_dir() / name.replace("/", "--")
    if _cached_dir(name, item) is None:
        _check_reachable(name, item)
        _remove_partial(folder)
    configured = _setting("TTS_COQUI_CACHE_DIR", "")
    manager = ModelManager(output_prefix=configured or None, progress_bar=progress)
    try:
        model_path, config_path, _ = manager.download_model(name)
    except Exception as exc:
        _remove_partial(folder)
        raise EngineUnavailable(
            f"downloading Coqui model {name} failed ({exc}); retry `{_download_hint(name)}`"
        ) from exc
    return Path(model_path), Path(config_path) if config_path else None


def _remove_partial(folder: Path | None) -> None:
    """Remove an interrupted download: Coqui takes any existing folder for a complete model."""
    if folder is not None and folder.is_dir() and next(folder.rglob("*.pt*"), None) is None:
        shutil.rmtree(folder, ignore_errors=True)


def _download_hint(name: str) -> str:
    return DOWNLOAD_COMMAND.format(name=name)


def _check_reachable(name: str, item: dict[str, Any]) -> None:
    """Fail fast without a network: Coqui's own downloads have no timeout."""
    if "repo_id" in item and os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true"}:
        raise EngineUnavailable(
            f"{name} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
        )
    url = _download_url(item)
    proxy = getproxies().get(urlsplit(url).scheme)
    target = urlsplit(proxy or url)
    host, port = target.hostname or "", target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise EngineUnavailable(
            f"Coqui model {name} is not in the cache ({cache_dir()}) and cannot be downloaded: "
            f"{host}:{port} is unreachable ({exc}). Run `{_download_hint(name)}` where the "
            "internet is reachable, or set TTS_COQUI_CACHE_DIR to a folder that holds it"
        ) from exc


def _download_url(item: dict[str, Any]) -> str:
    if "repo_id" in item:
        return os.environ.get("HF_ENDPOINT", HF_ENDPOINT)
    if item.get("fairseq"):
        return FAIRSEQ_URL
    url = item.get("github_rls_url", "https://github.com")
    return url[0] if isinstance(url, list) else url


# Reading model configs without torch ------------------------------------------------------------


# Each config as last read, with the file's time, size and inode: every POST for a voice whose
# model this process has not loaded (the web process's, always) checks the voice's
# licence in its config; read and parsed each time, that took 40 us of a 150 us check.
_configs: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _read_config(path: Path) -> dict[str, Any]:
    """The config's JSON ({} when unreadable); read again when the file changes. Callers
    must not change what they are given."""
    try:
        signature = file_signature(path)
        known = _configs.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    _configs[path] = (signature, config)
    return config


def _config_value(config: dict[str, Any], key: str) -> Any:
    """A value from the top level of a Coqui config, else from its ``model_args``."""
    value = config.get(key)
    if value in (None, "", []):
        value = (config.get("model_args") or {}).get(key)
    return value


def _local_file(value: Any, config_path: Path) -> Path | None:
    """A file named in a config; configs written elsewhere point to folders that moved."""
    if isinstance(value, list):
        value = value[0] if value else None
    if not value:
        return None
    path = Path(value)
    for candidate in (path, config_path.parent / path.name):
        if candidate.is_file():
            return candidate
    return None


def _names_in(path: Path) -> list[str]:
    """Speaker names in a Coqui id file (``{name: id}``) or d-vector file."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
    else:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        return []
    values = list(data.values())
    if values and isinstance(values[0], dict):  # d-vectors: {clip: {"name": ..., ...}}
        return sorted({str(v["name"]) for v in values if "name" in v})
    return [str(name) for name in data]


def config_speakers_and_languages(config_path: Path) -> tuple[list[str], list[str]]:
    """Speakers and languages a model config declares (empty where there is only one)."""
    config = _read_config(config_path)
    speakers: list[str] = []
    if _config_value(config, "use_speaker_embedding"):
        if names := config.get("speakers"):
            speakers = [str(name) for name in names]
        else:
            source = _config_value(config, "speakers_file") or _config_value(config, "speaker_file")
            path = _local_file(source, config_path)
            speakers = _names_in(path) if path else []
    elif _config_value(config, "use_d_vector_file"):
        path = _local_file(_config_value(config, "d_vector_file"), config_path)
        speakers = _names_in(path) if path else []
    languages: list[str] = []
    ids_file = _local_file(_config_value(config, "language_ids_file"), config_path)
    if ids_file and _config_value(config, "use_language_embedding"):
        languages = sorted(json.loads(ids_file.read_text(encoding="utf-8")))
    elif len(config.get("languages") or []) > 1:
        languages = [str(language) for language in config["languages"]]
    return (speakers if len(speakers) > 1 else []), (languages if len(languages) > 1 else [])


def _voice_config_path(voice: Voice) -> Path | None:
    if voice.config_path:
        return Path(voice.config_path)
    item = _model_item(voice.model) if voice.model else None
    folder = _cached_dir(voice.model, item) if item else None
    if folder is None:
        return None
    configs = sorted(folder.rglob("config.json"), key=lambda p: len(p.parts))
    return configs[0] if configs else None


# Voices -----------------------------------------------------------------------------------------


def _slug(value: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", value.lower()).strip("-") or "default"


def bcp47(language: str) -> str:
    """A model's language name as a BCP 47 tag in the catalog's style (``pt_BR`` -> ``pt-br``)."""
    return language.replace("_", "-").lower()


def expand_voice(voice: Voice) -> list[Voice]:
    """One voice per speaker (and language) of a multi-speaker or multi-lingual model.

    Ids are ``<voice id>:<speaker>`` and ``<voice id>[:<speaker>]@<language>``. A voice that
    pins its speaker is not expanded over speakers. Reads the loaded model where there is one,
    else the model's config (torch only for a ``.pth`` speakers file); ``[voice]`` when there
    is nothing to expand or the model is not available locally.
    """
    model = loaded_model(voice)
    if model is not None:
        speakers, languages = model.speakers(), model.languages()
    else:
        config_path = _voice_config_path(voice)
        if config_path is None or not config_path.is_file():
            return [voice]
        try:
            speakers, languages = config_speakers_and_languages(config_path)
        except (OSError, ValueError, RuntimeError) as exc:
            logger.warning("Cannot read the speakers of %s: %s", voice.id, exc)
            return [voice]
    if voice.speaker:
        speakers = []
    if not speakers and len(languages) < 2:
        return [voice]
    return [
        _variant(voice, speaker, language)
        for speaker in speakers or [voice.speaker]
        for language in (languages if len(languages) > 1 else [""])
    ]


def _variant(voice: Voice, speaker: str, language: str) -> Voice:
    voice_id, details = voice.id, []
    if speaker and speaker != voice.speaker:
        voice_id += f":{_slug(speaker)}"
        details.append(speaker)
    if language:
        voice_id += f"@{_slug(bcp47(language))}"
        details.append(bcp47(language))
    return replace(
        voice,
        id=voice_id,
        label=f"{voice.label} ({', '.join(details)})",
        speaker=speaker,
        language=bcp47(language) if language else voice.language,
        options=dict(voice.options),
    )


def _match_language(wanted: str, languages: list[str]) -> str | None:
    """The model language for a BCP 47 tag: exact match first, then the primary subtag."""
    tag = bcp47(wanted)
    for language in languages:
        if bcp47(language) == tag:
            return language
    primary = tag.split("-")[0]
    for language in languages:
        if bcp47(language).split("-")[0] == primary:
            return language
    return None


# Loaded models ----------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A loaded ``TTS.api.TTS`` and what the engine needs to drive it."""

    key: str
    voice: Voice  # the voice that loaded it, expanded by ``discover_voices``
    tts: Any
    device: str
    sample_rate: int
    load_s: float = 0.0
    warmup_s: float = 0.0

    @property
    def synthesizer(self) -> Any:
        return self.tts.synthesizer

    @property
    def is_xtts(self) -> bool:
        return "xtts" in str(self.synthesizer.tts_config.get("model", ""))

    def speakers(self) -> list[str]:
        return list(self.tts.speakers or [])

    def languages(self) -> list[str]:
        languages = list(self.tts.languages or [])
        return languages if len(languages) > 1 else []

    def speakable(self, text: str) -> bool:
        """Whether ``text`` holds anything the model can say (not only punctuation/unknowns)."""
        if not any(ch.isalnum() for ch in text):
            return False
        tokenizer = getattr(self.synthesizer.tts_model, "tokenizer", None)
        if tokenizer is None or getattr(tokenizer, "phonemizer", None) is not None:
            return True
        try:
            cleaned = tokenizer.text_cleaner(text) if tokenizer.text_cleaner else text
            chars = (tokenizer.characters.id_to_char(i) for i in tokenizer.encode(cleaned))
            return any(ch.isalnum() for ch in chars)
        except Exception:  # noqa: BLE001 - unusual tokenizers: let the model decide
            return True


def _model_key(voice: Voice) -> str:
    if voice.model:
        return voice.model
    return str(Path(voice.model_path).expanduser().resolve())


def loaded_model(voice: Voice) -> LoadedModel | None:
    """The model ``voice`` resolves to if this process has loaded it."""
    return _registry.get(_model_key(voice))


def get_model(voice: Voice) -> LoadedModel:
    """The process-wide instance of the model of ``voice``, loaded and warmed up once."""
    key = _model_key(voice)
    if (model := _registry.get(key)) is not None:
        return model
    with _registry_lock:
        if key not in _registry:
            _registry[key] = _load(voice, key)
        return _registry[key]


def unload(voice: Voice) -> None:
    """Forget the model of ``voice`` (tests; memory is freed once nothing else holds it)."""
    with _registry_lock:
        _registry.pop(_model_key(voice), None)


def _load(voice: Voice, key: str) -> LoadedModel:
    _ensure_license(voice)
    _cap_primitive_cache()
    try:
        import torch
        from TTS.api import TTS
    except ImportError as exc:
        msg = f"coqui-tts cannot be imported ({exc}); run `{INSTALL_COMMAND}`"
        raise EngineUnavailable(msg) from exc
    _configure_threads(torch)
    device = _device(torch)
    _configure_cudnn(torch, device)
    paths = _model_files(voice)
    started = time.perf_counter()
    try:
        tts = TTS(progress_bar=False, **paths).to(device)
    except Exception as exc:
        raise EngineUnavailable(f"cannot load Coqui model {key}: {exc}") from exc
    model = LoadedModel(
        key=key,
        voice=voice,
        tts=tts,
        device=device,
        sample_rate=int(tts.synthesizer.output_sample_rate),
        load_s=time.perf_counter() - started,
    )
    started = time.perf_counter()
    _synthesize(model, WARMUP_TEXT, voice)
    model.warmup_s = time.perf_counter() - started
    logger.info(
        "Loaded Coqui model %s on %s in %.2f s (warm-up %.2f s)",
        key,
        device,
        model.load_s,
        model.warmup_s,
    )
    return model


def _model_files(voice: Voice) -> dict[str, str]:
    """Arguments of ``TTS(...)``: local files, downloaded first for a name not in the cache."""
    if not voice.model:
        ok, reason = _file_availability(voice)
        if not ok:
            raise EngineUnavailable(reason)
        return {"model_path": voice.model_path, "config_path": voice.config_path}
    item = _model_item(voice.model)
    if item is None:
        raise EngineUnavailable(_availability_by_name(voice)[1])
    model_path, config_path = _fetch(voice.model, item, progress=False)
    files = {"model_path": str(model_path), "config_path": str(config_path or "")}
    if vocoder := item.get("default_vocoder"):
        vocoder_path, vocoder_config = _fetch(vocoder, _model_item(vocoder) or {}, progress=False)
        files.update(vocoder_path=str(vocoder_path), vocoder_config_path=str(vocoder_config))
    return files


# What the libraries read for the caches TTS_ONEDNN_CACHE_CAPACITY caps (_cap_primitive_cache).
SHAPE_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def _cap_primitive_cache() -> None:
    """Bound the two caches that CPU inference keeps per input shape, and so per text
    length (each new text is a new shape): oneDNN's primitive cache
    (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) and PyTorch's own cache of oneDNN convolutions
    (ideep's, ``LRU_CACHE_CAPACITY``), each 1,024 entries by default. At their defaults
    they grow a worker by a tenth and more over its first few hundred texts, and the
    second went on growing past a thousand sessions; a text length seldom comes again, so
    they almost never pay back. 32 bounds both at no measurable speed cost
    (docs/benchmarks.md, P10 and P75); 0 leaves the libraries' defaults. Each is read
    when first used, so set before the first synthesis; either variable in the
    environment wins for its own cache."""
    capacity = int(_setting("TTS_ONEDNN_CACHE_CAPACITY", 32) or 0)
    if capacity > 0:
        for name in SHAPE_CACHE_VARIABLES:
            os.environ.setdefault(name, str(capacity))


# torch's own default intra-op thread count, as the first model loaded found it.
_torch_default_threads: int | None = None


def _base_threads(torch: Any) -> int:
    """The intra-op threads of a synthesis whose voice names none: TTS_TORCH_THREADS,
    else torch's default."""
    global _torch_default_threads
    threads = int(_setting("TTS_TORCH_THREADS", 0) or 0)
    if threads < 0:
        raise ImproperlyConfigured("TTS_TORCH_THREADS must be 0 (torch's default) or more")
    if _torch_default_threads is None:
        _torch_default_threads = torch.get_num_threads()
    return threads or _torch_default_threads


def _configure_threads(torch: Any) -> None:
    torch.set_num_threads(_base_threads(torch))


def voice_threads(voice: Voice) -> int:
    """The voice's own intra-op thread count (its ``options["torch_threads"]``), 0 if none.

    A full-size model's operations are large enough to share out over every core: on two
    cores its first segment took 0.78 s on two threads against 1.3 s on one, and two
    workers each on two threads, both busy, kept pace with two on one (docs/benchmarks.md,
    P82). A small model's are not: on two threads each it stalled when both workers were
    busy (P6). So TTS_TORCH_THREADS stays cores ÷ workers, for every voice, and a heavy
    voice may ask for more."""
    if not isinstance(voice.options, dict):
        raise ImproperlyConfigured(
            f"voice {voice.id!r}: options must be an object, not {voice.options!r}"
        )
    value = voice.options.get("torch_threads", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImproperlyConfigured(
            f"voice {voice.id!r}: options.torch_threads must be a whole number, 0 or more "
            f"(0: TTS_TORCH_THREADS), not {value!r}"
        )
    return value


def _use_threads(torch: Any, voice: Voice) -> None:
    """Size the intra-op pool for ``voice`` on the calling thread, the one that
    synthesizes (OpenMP keeps the count per thread). Only on a change: torch empties
    oneDNN's cache of compiled convolutions with it, so a worker alternating between
    voices of different counts compiles them again after each switch."""
    wanted = voice_threads(voice) or _base_threads(torch)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def _device(torch: Any) -> str:
    wanted = str(_setting("TTS_COQUI_DEVICE", "auto") or "auto").lower()
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cpu":
        return "cpu"
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EngineUnavailable(f"TTS_COQUI_DEVICE={wanted} but CUDA is not available")
        return wanted
    raise ImproperlyConfigured(f"TTS_COQUI_DEVICE must be auto, cpu or cuda, not {wanted!r}")


def _configure_cudnn(torch: Any, device: str) -> None:
    """cuDNN on or off for synthesis on CUDA (``TTS_COQUI_CUDNN``, off by default).

    cuDNN builds an execution plan for every convolution and input shape it meets, and
    each text length is a new shape. On an H200 a full-size VITS took 111 ms for a text of
    a new length against 40 ms for the same length again, and the plans it keeps (up to
    10,000 by default) grew the worker's heap by 1.5 MB for every new length; PyTorch's own
    CUDA convolutions took 71 ms either way and the heap stayed flat (docs/benchmarks.md,
    P84, measured with VITS). Where lengths repeat, the plans make the median faster; the
    memory grows with every length a worker meets. The switch is process-wide: a worker
    narrates and does nothing else with torch."""
    if device.startswith("cuda"):
        torch.backends.cudnn.enabled = bool(_setting("TTS_COQUI_CUDNN", False))


# Synthesis --------------------------------------------------------------------------------------


def _synthesize(model: LoadedModel, text: str, voice: Voice) -> Audio:
    import torch

    if not model.speakable(text):
        return Audio(pcm=b"", sample_rate=model.sample_rate)
    inputs = _inputs(model, voice)
    seed = int(voice.options.get("seed", 0))
    try:
        with _inference_lock, torch.inference_mode(), _speed(model, voice.speed) as extra:
            _use_threads(torch, voice)
            torch.manual_seed(seed)
            wav = model.synthesizer.tts(text=text, split_sentences=False, **inputs, **extra)
    except torch.cuda.OutOfMemoryError as exc:
        raise EngineError(f"out of GPU memory: {exc}", code="out_of_memory") from exc
    except Exception as exc:
        raise EngineError(f"Coqui synthesis failed: {exc}", code="synthesis_failed") from exc
    return Audio(pcm=_to_pcm(_without_pad(wav)), sample_rate=model.sample_rate)


def _inputs(model: LoadedModel, voice: Voice) -> dict[str, Any]:
    """Speaker, reference audio and language arguments of ``Synthesizer.tts``."""
    inputs: dict[str, Any] = {"speaker_name": None, "language_name": None, "speaker_wav": None}
    speakers = model.speakers()
    if voice.speaker_wav:
        if not Path(voice.speaker_wav).is_file():
            raise EngineError(f"speaker_wav {voice.speaker_wav} not found", code="speaker_wav")
        inputs.update(speaker_wav=voice.speaker_wav, speaker_name=voice.speaker or None)
    elif speakers:
        speaker = voice.speaker or speakers[0]
        if speaker not in speakers:
            raise EngineError(
                f"{speaker!r} is not a speaker of {model.key}; it has {', '.join(speakers[:20])}",
                code="unknown_speaker",
            )
        inputs["speaker_name"] = speaker
    elif voice.speaker:
        raise EngineError(f"{model.key} has a single speaker", code="unknown_speaker")
    if languages := model.languages():
        language = _match_language(voice.language, languages)
        if language is None:
            raise EngineError(
                f"{model.key} does not speak {voice.language}; it speaks {', '.join(languages)}",
                code="unsupported_language",
            )
        inputs["language_name"] = language
    return inputs


@contextlib.contextmanager
def _speed(model: LoadedModel, speed: float) -> Iterator[dict[str, Any]]:
    """Speaking rate: XTTS takes ``speed``; VITS-like models scale durations (length_scale)."""
    if speed <= 0:
        raise EngineError(f"speed must be positive, not {speed}", code="invalid_speed")
    tts_model = model.synthesizer.tts_model
    base = getattr(tts_model, "length_scale", None)
    if speed == 1.0 or (not model.is_xtts and not isinstance(base, int | float)):
        yield {}
    elif model.is_xtts:
        yield {"speed": speed}
    else:
        tts_model.length_scale = base / speed
        try:
            yield {}
        finally:
            tts_model.length_scale = base


def _without_pad(wav: Any) -> Any:
    """The waveform without the silence ``Synthesizer.tts`` appends after every sentence.

    We synthesize one segment with ``split_sentences=False``, so there is exactly one pad, of
    ``PAD_SILENCE_SAMPLES`` exact zeros at the end: remove those samples and nothing else.
    """
    import numpy as np
    from TTS.utils.synthesizer import PAD_SILENCE_SAMPLES

    samples = np.asarray(wav, dtype=np.float32)
    tail = samples[-PAD_SILENCE_SAMPLES:]
    if samples.size >= PAD_SILENCE_SAMPLES and not tail.any():
        return samples[:-PAD_SILENCE_SAMPLES]
    return samples


def _to_pcm(samples: Any) -> bytes:
    """Float samples in [-1, 1] to 16-bit little-endian PCM, without per-chunk normalisation
    (which would make loudness jump from one chunk to the next)."""
    import numpy as np

    clipped = np.clip(samples, -1.0, 1.0)
    return np.round(clipped * 32767).astype("<i2").tobytes()


# Availability -----------------------------------------------------------------------------------


def _file_availability(voice: Voice) -> tuple[bool, str]:
    if not voice.model_path or not voice.config_path:
        return False, f"voice {voice.id} needs both model_path and config_path (or a model name)"
    for label, value in (("model", voice.model_path), ("config", voice.config_path)):
        if not Path(value).expanduser().exists():
            return False, f"{label} file {value} not found; fix the path in the voice settings"
    return True, ""


def _availability_by_name(voice: Voice) -> tuple[bool, str]:
    item = _model_item(voice.model)
    if item is None:
        return False, f"{voice.model!r} is not a Coqui model name; `{LIST_COMMAND}` lists them"
    if missing := _missing_downloads(voice.model, item):
        return False, (
            f"Coqui model {voice.model} is not downloaded (missing: {', '.join(missing)}; "
            f"cache: {cache_dir()}); run `{_download_hint(voice.model)}`"
        )
    return True, ""


# The engine -------------------------------------------------------------------------------------

_found_packages = False


def _installed() -> bool:
    """Whether torch and coqui-tts can be imported (without importing them: 60 us of path
    lookups). Once found, taken as found; not found, looked for again the next time."""
    global _found_packages
    if not _found_packages:
        _found_packages = all(importlib.util.find_spec(name) for name in ("torch", "TTS"))
    return _found_packages


class CoquiEngine(Engine):
    """Coqui TTS (``coqui-tts``) voices; one model instance per process (see ``get_model``)."""

    name = "coqui"
    # VITS keeps its quality and its latency low on sentences up to about this length.
    max_segment_chars = 250

    def availability(self, voice: Voice) -> tuple[bool, str]:
        """Cheap: looks for coqui-tts, the files or the cache, and the licence; loads nothing."""
        if _registry.get(_model_key(voice)) is not None:
            return True, ""
        if not _installed():
            return False, f"coqui-tts is not installed; run `{INSTALL_COMMAND}`"
        if _is_xtts(voice) and not _license_agreed():
            return False, _license_reason(voice)
        if voice.model:
            return _availability_by_name(voice)
        return _file_availability(voice)

    def model_id(self, voice: Voice) -> str:
        if voice.model:
            return voice.model
        path = Path(voice.model_path)
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name

    def load(self, voice: Voice) -> None:
        voice_threads(voice)  # a bad option stops the worker at start, with its reason
        get_model(voice)

    def synthesize(self, text: str, voice: Voice) -> Audio:
        return _synthesize(get_model(voice), text, voice)

    def discover_voices(self) -> list[Voice]:
        """The speakers and languages of the models this process has loaded, as voices."""
        voices: list[Voice] = []
        for model in list(_registry.values()):
            expanded = expand_voice(model.voice)
            if expanded != [model.voice]:
                voices.extend(expanded)
        return voices
