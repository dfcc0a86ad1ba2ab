"""Input cleaning shared by the API, the consumer and the commands."""

from __future__ import annotations

import re
import unicodedata

from tts.conf import settings
from tts.errors import InvalidInput

# C0/C1 control characters except tab and newline; they carry no speech and break
# terminals, logs and some engines.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: object) -> str:
    """Normalised narration text, or InvalidInput with a reason a person understands."""
    if text is None:
        raise InvalidInput(
            "text (or scene) is required.", code="empty_text", fields={"text": "required"}
        )
    if not isinstance(text, str):
        raise InvalidInput(
            "text must be a string.", code="invalid_text", fields={"text": "must be a string"}
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            "text is not valid Unicode (lone surrogates).",
            code="invalid_text",
            fields={"text": "invalid Unicode"},
        ) from None
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    if not text.strip():
        raise InvalidInput("text is empty.", code="empty_text", fields={"text": "required"})
    if not any(char.isalnum() for char in text):
        raise InvalidInput(
            "text has nothing to say: no letters or digits.",
            code="nothing_to_say",
            fields={"text": "no letters or digits"},
        )
    limit = settings.TTS_MAX_CHARS
    if len(text) > limit:
        raise InvalidInput(
            f"text is {len(text)} characters; the limit is {limit}.",
            code="text_too_long",
            fields={"text": f"at most {limit} characters"},
        )
    return text
