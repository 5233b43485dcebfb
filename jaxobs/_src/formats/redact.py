"""Secrets kept out of every file a run writes: the rules, in one place.

Four rules, applied to configs (``run_start``, ``config_update``, ``trainlog.json``), event
payloads, the environment snapshot (argv and environment variables) and error messages:

- **Keys.** A value under a key that names a secret (`is_secret_key`) is replaced by
  ``"<redacted>"``.
- **Token formats.** A substring that has the shape of a well-known token (`TOKEN_FORMATS`:
  GitHub, Hugging Face, OpenAI/Anthropic, Slack, AWS access key ids, JWTs, ``Bearer ...``) is
  replaced, in any string.
- **URLs.** The credentials of a URL (``scheme://user:password@host``) are replaced, in any
  string: ``https://<redacted>@host``.
- **Flags.** The value after a secret-looking flag (``--api-key X``, ``--password=Y``,
  ``db.password=Y``) is replaced, in argv and in any string.

``"<redacted>"`` itself passes through every rule unchanged, so redacting twice is harmless.
"""

from __future__ import annotations

import itertools
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "REDACTED",
    "SECRET_KEY_PREFIXES",
    "SECRET_WORDS",
    "TEXT_SECRET_WORDS",
    "TOKEN_FORMATS",
    "is_secret_key",
    "key_words",
    "redact_argv",
    "redact_env",
    "redact_mapping",
    "redact_record_strings",
    "redact_text",
    "redact_value",
    "redacts_value",
]

REDACTED = "<redacted>"

# A key is split into words (see `key_words`). A key holding one of these words is a secret,
# whatever its value (password, client_secret, HF_TOKEN, session_cookie, jwt).
SECRET_WORDS = frozenset(
    {
        "password",
        "passwords",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "apikey",
        "apikeys",
        "credential",
        "credentials",
        "authorization",
        "jwt",
        "cookie",
        "cookies",
    }
)

# A key holding one of these words is a secret when its value is text (a string, or a list
# of strings): ``auth="user:pass"``, ``basic_auth=...``. Under such a key numbers, flags and
# mappings are kept (``auth={"user": ..., "client_secret": ...}``, whose own keys are checked
# in turn).
TEXT_SECRET_WORDS = frozenset({"auth"})

# ``tokens`` is text-secret only as the whole key or after one of `SECRET_KEY_PREFIXES` or
# these words (``tokens``, ``hf_tokens``, ``refresh_tokens``); ``max_tokens``,
# ``num_tokens``, ``special_tokens`` and ``tokens_per_s`` are not secrets.
_TOKENS_PREFIXES = frozenset({"bearer", "refresh", "session", "bot", "user", "oauth"})

# ``<prefix> key(s)`` and ``<prefix> pat`` are secrets: api_key, wandb_key, ssh_key,
# openai_key, github_pat. Any other ``*_key`` (rng_key, sort_key, metric_key) is not.
SECRET_KEY_PREFIXES = frozenset(
    {
        "api",
        "private",
        "access",
        "secret",
        "ssh",
        "signing",
        "encryption",
        "master",
        "client",
        "license",
        "deploy",
        "service",
        "account",
        "auth",
        "wandb",
        "openai",
        "anthropic",
        "hf",
        "huggingface",
        "github",
        "gh",
        "gitlab",
        "aws",
        "gcp",
        "azure",
        "comet",
        "neptune",
        "mlflow",
        "slack",
    }
)
_PAT_PREFIXES = frozenset({"github", "gh", "gitlab", "personal", "azure"})
_KEY_WORDS = frozenset({"key", "keys", "pat"})

# A number under a secret key is kept when the key counts or indexes something:
# pad_token_id=0, token_count=12, max_token=512. A string under the same key is still a secret.
_NUMBER_LAST_WORDS = frozenset({"id", "ids", "idx", "index", "count", "len", "length", "size"})
_NUMBER_FIRST_WORDS = frozenset({"num", "n", "max", "min"})

# Names that may hold a W&B API key (40 hexadecimal digits).
_WANDB_WORDS = frozenset({"wandb", "wb"})

TOKEN_FORMATS: dict[str, str] = {
    "github": r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",
    "huggingface": r"\bhf_[A-Za-z0-9]{30,}",
    "openai/anthropic": r"\bsk-[A-Za-z0-9_-]{20,}",
    "slack": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    "aws access key id": r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    "jwt": r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
    "bearer": r"(?<=\bBearer )[A-Za-z0-9._~+/=-]{16,}",
}
"""Substrings replaced in any string, by name (the regular expressions are documented)."""

_TOKENS_RE = re.compile("|".join(f"(?:{p})" for p in TOKEN_FORMATS.values()))
# scheme://userinfo@ : userinfo runs up to the last "@" before the host's "/", "?" or "#".
_URL_USERINFO_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#@]*(?:@[^/\s?#@]*)*@")
# --name=value, --name value, name=value inside a string (a command line, a DSN).
_FLAG_EQ_RE = re.compile(r"(?<![\w.+~-])([-+~]{0,2}[A-Za-z_][\w.-]*)=([^\s&;,'\"]+)")
_FLAG_SPACE_RE = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)(\s+)([^\s-][^\s]*)")
_HEX40_RE = re.compile(r"[0-9a-fA-F]{40}")
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def key_words(key: str) -> list[str]:
    """A key's words: lowercase, split at non-alphanumerics and camelCase/acronym boundaries.

    ``"wandbApiKey"`` -> ``["wandb", "api", "key"]``; ``"--max-tokens"`` -> ``["max",
    "tokens"]``; ``"HFToken"`` -> ``["hf", "token"]``.
    """
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", key)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", spaced)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def _key_rule(key: str) -> str | None:
    """``"any"`` (every value is secret), ``"text"`` (text values are), or None."""
    words = key_words(key)
    if any(w in SECRET_WORDS for w in words):
        return "any"
    for a, b in itertools.pairwise(words):
        if b in ("key", "keys") and a in SECRET_KEY_PREFIXES:
            return "any"
        if b == "pat" and a in _PAT_PREFIXES:
            return "any"
    squashed = "".join(words)
    if any(part in squashed for part in ("apikey", "password", "passwd")):
        return "any"
    if any(w in TEXT_SECRET_WORDS for w in words):
        return "text"
    if words == ["tokens"] or (
        len(words) >= 2
        and words[-1] == "tokens"
        and (words[-2] in SECRET_KEY_PREFIXES or words[-2] in _TOKENS_PREFIXES)
    ):
        return "text"
    return None


def is_secret_key(key: str) -> bool:
    """Whether values under ``key`` (a config key, environment variable or flag) are redacted.

    The key is split into words (`key_words`). It is a secret when a word is in
    `SECRET_WORDS` (password, passwd, pwd, passphrase, secret(s), token, apikey(s),
    credential(s), authorization, jwt, cookie(s)); or a word is ``key``/``keys`` after one of
    `SECRET_KEY_PREFIXES` (api_key, wandb_key, ssh_key, openai_key), or ``pat`` after github,
    gh, gitlab, personal or azure; or the key without separators contains apikey, password or
    passwd (``OpenAIAPIKey``). Two more rules make a key secret only for text values (a
    string or a list of strings): a word is ``auth`` (`TEXT_SECRET_WORDS`), or the key is
    ``tokens``, or ends in ``tokens`` after one of `SECRET_KEY_PREFIXES` or bearer, refresh,
    session, bot, user, oauth (``hf_tokens``).

    ``HF_TOKEN``, ``github_pat``, ``session_cookie``, ``auth`` and ``tokens`` are secrets;
    ``max_tokens``, ``num_tokens``, ``tokens_per_s``, ``special_tokens``, ``author``,
    ``tokenizer``, ``rng_key`` and ``secretary`` are not.
    """
    return _key_rule(key) is not None


def _is_text(value: Any) -> bool:
    if isinstance(value, (str, bytes)):
        return True
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(v, (str, bytes)) for v in value)
    )


def _is_number(value: Any) -> bool:
    if isinstance(value, str):
        return _NUMBER_RE.fullmatch(value.strip()) is not None
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def redacts_value(key: str, value: Any, path: str = "") -> bool:
    """Whether ``value`` under ``key`` is replaced whole by ``"<redacted>"``.

    Empty values (None, ``""``) and flags (``True``/``False``) are kept, so that a reader sees
    a secret was not set. Under a key that names a secret, any other value is replaced,
    except a number (or a numeric string) when the key counts or indexes something (ends in
    id, ids, idx, index, count, len, length, size; begins with num, n, max, min). Under
    ``auth``- and ``tokens``-like keys only text is replaced. 40 hexadecimal digits (a W&B
    API key) are replaced under any key with a ``wandb``/``wb`` word in it or in ``path``.

    Args:
      key: The key (or environment variable, or flag name without dashes).
      value: The value under it, converted or not.
      path: Where the mapping holding ``key`` lies (``config.wandb``), if known.
    """
    if value is None or isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (str, bytes)) and not value:
        return False
    rule = _key_rule(key)
    if rule == "text":
        return _is_text(value) and not _is_number(value)
    if rule == "any":
        words = key_words(key)
        counts = words[-1] in _NUMBER_LAST_WORDS or words[0] in _NUMBER_FIRST_WORDS
        return not (counts and _is_number(value))
    if isinstance(value, str) and _HEX40_RE.fullmatch(value.strip()):
        return any(w in _WANDB_WORDS for w in key_words(f"{path} {key}"))
    return False


def _redact_flag_eq(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    if value != REDACTED and redacts_value(name, value):
        return f"{name}={REDACTED}"
    return match.group(0)


def _redact_flag_space(match: re.Match[str]) -> str:
    name, space, value = match.groups()
    if value != REDACTED and redacts_value(name, value):
        return f"{name}{space}{REDACTED}"
    return match.group(0)


def redact_text(text: str) -> str:
    """``text`` with every secret substring replaced by ``"<redacted>"``.

    Replaced: URL credentials (``https://user:pass@host`` -> ``https://<redacted>@host``),
    substrings in a `TOKEN_FORMATS` shape, and the value after a secret flag or key
    (``--api-key X``, ``--password=Y``, ``token=Z`` in a query string), by the rules of
    `redacts_value`.

    Example:
      >>> redact_text("git clone https://me:hunter2@host/x.git --token abc")
      'git clone https://<redacted>@host/x.git --token <redacted>'
    """
    if not text:
        return text
    out = (
        _URL_USERINFO_RE.sub(lambda m: f"{m.group(1)}{REDACTED}@", text) if "://" in text else text
    )
    out = _TOKENS_RE.sub(REDACTED, out)
    if "=" in out:
        out = _FLAG_EQ_RE.sub(_redact_flag_eq, out)
    if "-" in out:
        out = _FLAG_SPACE_RE.sub(_redact_flag_space, out)
    return out


def redact_argv(argv: Iterable[str]) -> list[str]:
    """A copy of a command line with its secrets replaced by ``"<redacted>"``.

    The element after a secret flag (``--api-key X``, ``--wandb_key X``; see `is_secret_key`)
    is replaced unless it begins with ``--``; ``--password=Y`` and Hydra-style
    ``db.password=Y`` / ``+wandb.api_key=Y`` keep their name; and every element goes through
    `redact_text` (URL credentials, token formats). Single-letter flags (``-p``) are kept:
    their meaning depends on the program.

    Example:
      >>> redact_argv(["train.py", "--api-key", "abc", "--lr=0.1", "--password=pw"])
      ['train.py', '--api-key', '<redacted>', '--lr=0.1', '--password=<redacted>']
    """
    args = [str(a) for a in argv]
    out: list[str] = []
    for i, arg in enumerate(args):
        prev = args[i - 1] if i else ""
        if (
            i > 0
            and re.fullmatch(r"--?[A-Za-z][\w-]+", prev)
            and not arg.startswith("--")
            and redacts_value(prev.lstrip("-"), arg)
        ):
            out.append(REDACTED)
            continue
        name, eq, value = arg.partition("=")
        named = eq and value and re.fullmatch(r"[-+~]{0,2}[A-Za-z_][\w.-]*", name)
        if named and redacts_value(name.lstrip("-+~"), value):
            out.append(f"{name}={REDACTED}")
            continue
        out.append(redact_text(arg))
    return out


def redact_value(key: str, value: Any, path: str = "") -> Any:
    """``"<redacted>"`` when `redacts_value` says so, else ``value`` with its strings
    redacted (`redact_record_strings`)."""
    if redacts_value(key, value, path):
        return REDACTED
    return redact_record_strings(value, f"{path}.{key}" if path else key)


def redact_mapping(mapping: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """A copy of a JSON-like mapping with its secrets redacted, recursively.

    Values under secret keys are replaced whole (`redacts_value`); every other string, at any
    depth, goes through `redact_text`. Keys are kept. The input is not modified.
    """
    return {k: redact_value(str(k), v, path) for k, v in mapping.items()}


def redact_record_strings(data: Any, path: str = "") -> Any:
    """Plain JSON data (a record payload, a note's text) with its secrets redacted.

    Mappings go through `redact_mapping`, lists item by item, strings through `redact_text`;
    everything else is returned as is.
    """
    if isinstance(data, str):
        return redact_text(data)
    if isinstance(data, Mapping):
        return redact_mapping(data, path)
    if isinstance(data, (list, tuple)):
        return [redact_record_strings(v, path) for v in data]
    return data


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of environment variables with their secrets redacted.

    A non-empty value of a secret variable (``WANDB_API_KEY``, ``HF_TOKEN``,
    ``AWS_SECRET_ACCESS_KEY``; see `is_secret_key`) is replaced; other values go through
    `redact_text` (``WANDB_BASE_URL=https://user:pass@host`` keeps its host).
    """
    return {k: (REDACTED if redacts_value(k, v) else redact_text(v)) for k, v in env.items()}
