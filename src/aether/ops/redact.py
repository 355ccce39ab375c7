"""Secrets out of text: the one redaction every part of a diagnostics bundle goes through.

What is hidden, wherever it appears in the text:

* Aether tokens (``ae_...``: admin, operator, join tokens, node credentials);
* PEM blocks holding a key (``-----BEGIN ... PRIVATE KEY-----`` ... ``END``);
* passwords in URLs (``scheme://user:PASSWORD@host``);
* ``Authorization:`` header values and ``Bearer``/``Basic`` credentials;
* the values of keys naming a secret (``password``, ``secret``, ``token``, ``api_key``,
  ``access_key``, ``secret_key``, ``credential``), in ``key = value``, ``key: value``,
  ``"key": "value"`` and ``KEY=value`` forms;
* every value in ``known`` (secrets the caller holds: a file's token, a secret's value),
  also in their base64 and URL-encoded forms.

    clean = redact("postgresql://aether:hunter2@db/aether", known=["hunter2"])
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import quote

__all__ = ["REDACTED", "redact", "redact_bytes"]

REDACTED = "<redacted>"

_TOKEN = re.compile(r"\bae_[A-Za-z0-9_\-]{8,}")
_PEM_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY|[A-Z0-9 ]*KEY)-----.*?-----END \1-----", re.DOTALL
)
_URL_PASSWORD = re.compile(  # bounded, from a word's start: linear on any input
    r"(?P<head>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s:/@\"']{0,256}:)"
    r"[^\s@/\"']{1,512}(?=@)"
)
_AUTH_HEADER = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}")
_WORDS = "password|passwd|secret|token|api_key|apikey|access_key|secret_key|credential"
_NAMES = r"(?<![A-Za-z0-9_.\-])[A-Za-z0-9_.\-]{0,64}?(?:" + _WORDS + r")[A-Za-z0-9_.\-]{0,64}"
_KEYED = re.compile(
    r"(?i)(?P<key>[\"']?" + _NAMES + r"[\"']?\s*[:=]\s*)(?P<q>[\"']?)(?P<value>[^\"'\s,}\]#]+)"
)
_PATHLIKE = re.compile(r"(?i)_(file|path|dir)[\"']?\s*[:=]")  # a path names where, not what


def _keyed(match: re.Match[str]) -> str:
    key = match.group("key")
    value = match.group("value")
    if _PATHLIKE.search(key) or value in (REDACTED, "null", "None", "true", "false"):
        return match.group(0)
    if value.startswith("<redacted"):
        return match.group(0)
    return f"{key}{match.group('q')}{REDACTED}"


def _forms(value: str) -> set[str]:
    """The plain value and the encodings a log line or config might carry it in."""
    raw = value.encode()
    forms = {value, quote(value, safe=""), base64.b64encode(raw).decode()}
    forms.add(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    forms.add(base64.b64encode(raw).decode().rstrip("="))
    return {f for f in forms if len(f) >= 4}


def redact(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every secret it holds replaced by ``<redacted>``."""
    for value in sorted({v for v in known if v and len(v) >= 4}, key=len, reverse=True):
        for form in sorted(_forms(value), key=len, reverse=True):
            text = text.replace(form, REDACTED)
    text = _PEM_KEY.sub(f"-----BEGIN REDACTED KEY-----{REDACTED}-----END REDACTED KEY-----", text)
    text = _TOKEN.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _KEYED.sub(_keyed, text)


def redact_bytes(data: bytes, known: Iterable[str] = ()) -> bytes:
    """:func:`redact` for a file's bytes (decoded as UTF-8, undecodable bytes kept)."""
    return redact(data.decode("utf-8", "surrogateescape"), known).encode("utf-8", "surrogateescape")
