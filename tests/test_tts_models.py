"""`manage.py tts_models`: list Coqui's catalog, download with a clear error offline."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command


def test_it_lists_coquis_models(capsys):
    call_command("tts_models", "--language", "en")
    out = capsys.readouterr().out
    assert "tts_models/en/ljspeech/vits" in out
    assert "cache:" in out


def test_an_unknown_model_name_is_a_clear_error():
    with pytest.raises(CommandError, match="not a Coqui model name"):
        call_command("tts_models", "--download", "no/such/model/here")


def test_a_download_without_network_fails_with_the_reason(settings, tmp_path, monkeypatch):
    settings.TTS_COQUI_CACHE_DIR = str(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(CommandError, match="cannot be downloaded|unreachable|failed"):
        call_command("tts_models", "--download", "tts_models/en/ljspeech/vits")
