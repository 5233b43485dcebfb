"""Secrets never reach a run directory: keys, token formats, URL credentials, argv and env."""

import json
import pathlib
import sys

import pytest
from helpers import read_events

import jaxobs
from jaxobs._src.formats.redact import (
    REDACTED,
    is_secret_key,
    redact_argv,
    redact_env,
    redact_record_strings,
    redact_text,
)

GHP = "ghp_" + "E1" * 18
GITHUB_PAT = "github_pat_" + "D2" * 15
HF = "hf_" + "c3" * 17
OPENAI = "sk-proj-" + "A4" * 15
SLACK = "xoxb-1234567890-slacksecret"
AWS = "AKIA" + "F5G6" * 4
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.jwtsig-secret"
WANDB_HEX = "0123456789abcdef" * 2 + "fedcba98"
COMMIT = "c0ffee00" * 5  # 40 hex, but not under a W&B key: kept

CONFIG = {
    "api_key": "apikey-secret-1",
    "wandb_key": "wandbkey-secret-2",
    "openai_key": OPENAI,
    "auth": "authuser:auth-secret-3",
    "authorization": "Bearer bearersecret4abcdefghij",
    "tokens": ["tokens-secret-5a", "tokens-secret-5b"],
    "hf_tokens": [HF],
    "hf_token": "hftoken-secret-6",
    "ssh_key": "sshkey-secret-7",
    "jwt": JWT,
    "session_cookie": "cookie-secret-8",
    "github_pat": GITHUB_PAT,
    "note": f"pushed with {GHP} yesterday",
    "slack": SLACK,
    "aws": {"id": AWS},
    "wandb": {"key": WANDB_HEX},
    "db_url": "postgres://dbuser:dbpass-secret-9@db.example.com/x",
    "cmd": "python train.py --password=cmdpass-secret-10 --token cmdtoken-secret-11",
    # not secrets
    "tokens_per_s": 1234.5,
    "max_tokens": 2048,
    "num_tokens": 77,
    "author": "Ada Lovelace",
    "homepage": "https://example.com/docs?page=1#top",
    "special_tokens": ["<pad>", "<eos>"],
    "commit": COMMIT,
    "use_auth_token": True,
    "pad_token_id": 0,
}
ARGV = [
    "train.py",
    "--api-key",
    "argv-secret-15",
    "--password=argv-secret-16",
    "--token",
    "argv-secret-17",
    "--lr",
    "0.1",
    "https://u:argv-pass-18@host.example.com/x",
    "db.password=argv-secret-19",
    "--max-tokens",
    "512",
]
ENV = {
    "WANDB_BASE_URL": "https://wbuser:env-pass-20@wandb.example.com",
    "WANDB_API_KEY": "env-secret-21",
    "WANDB_ENTITY": "team",
    "JAXOBS_NOTE": f"hf {HF}",
}
LATER = {"later_password": "late-secret-12", "later_url": "https://u:late-pass-13@h.example.com/"}

SECRETS = [
    "apikey-secret-1",
    "wandbkey-secret-2",
    OPENAI,
    "auth-secret-3",
    "bearersecret4",
    "tokens-secret-5",
    HF,
    "hftoken-secret-6",
    "sshkey-secret-7",
    JWT.split(".")[0],
    "cookie-secret-8",
    GITHUB_PAT,
    GHP,
    SLACK,
    AWS,
    WANDB_HEX,
    "dbpass-secret-9",
    "cmdpass-secret-10",
    "cmdtoken-secret-11",
    "late-secret-12",
    "late-pass-13",
    "emit-pass-14",
    "argv-secret-15",
    "argv-secret-16",
    "argv-secret-17",
    "argv-pass-18",
    "argv-secret-19",
    "env-pass-20",
    "env-secret-21",
    "error-pass-22",
]


@pytest.fixture
def secret_run(tmp_path, monkeypatch):
    """A run started with every kind of secret in its config, argv and env, ended by an error."""
    monkeypatch.setattr(sys, "argv", list(ARGV))
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    run = jaxobs.init("p", dir=tmp_path, id="r", terminal=False, config=CONFIG)
    with pytest.raises(RuntimeError), run:
        run.log({"train/loss": 1.0})
        run.update_config(LATER)
        run.emit("custom", info="https://u:emit-pass-14@h.example.com/")
        raise RuntimeError("could not reach https://u:error-pass-22@h.example.com/")
    return run.dir


def test_no_secret_in_any_file_of_the_run_directory(secret_run):
    """No secret string appears, as bytes, in any file under the run directory."""
    files = [p for p in pathlib.Path(secret_run).rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"events.jsonl", "trainlog.json"}
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret!r} is in {path}"


def test_non_secrets_are_kept(secret_run):
    """Counts, ordinary URLs, author and a git commit stay as they were given."""
    events = read_events(secret_run)
    start = events[0]
    config = start["run"]["config"]
    trainlog = json.loads((pathlib.Path(secret_run) / "trainlog.json").read_text())
    for got in (config, trainlog["run"]["config"]):
        for key in ("tokens_per_s", "max_tokens", "num_tokens", "author", "homepage", "commit"):
            assert got[key] == CONFIG[key], key
        assert got["special_tokens"] == ["<pad>", "<eos>"]
        assert got["use_auth_token"] is True and got["pad_token_id"] == 0
        assert got["api_key"] == REDACTED and got["tokens"] == REDACTED
        assert got["db_url"] == f"postgres://{REDACTED}@db.example.com/x"
        assert got["note"] == f"pushed with {REDACTED} yesterday"
    assert start["env"]["argv"] == [
        "train.py",
        "--api-key",
        REDACTED,
        f"--password={REDACTED}",
        "--token",
        REDACTED,
        "--lr",
        "0.1",
        f"https://{REDACTED}@host.example.com/x",
        f"db.password={REDACTED}",
        "--max-tokens",
        "512",
    ]
    env = start["env"]["env"]
    assert env["WANDB_BASE_URL"] == f"https://{REDACTED}@wandb.example.com"
    assert env["WANDB_API_KEY"] == REDACTED
    assert env["WANDB_ENTITY"] == "team"
    assert env["JAXOBS_NOTE"] == f"hf {REDACTED}"
    update = next(e for e in events if e["event"] == "config_update")
    assert update["config"] == {
        "later_password": REDACTED,
        "later_url": f"https://{REDACTED}@h.example.com/",
    }
    end = events[-1]
    assert end["status"] == "failed"
    assert end["error"]["message"] == f"could not reach https://{REDACTED}@h.example.com/"


SECRET_KEYS = [
    "api_key",
    "wandb_key",
    "openai_key",
    "auth",
    "authorization",
    "tokens",
    "hf_token",
    "hf_tokens",
    "HF_TOKENS",
    "ssh_key",
    "jwt",
    "session_cookie",
    "github_pat",
    "basic_auth",
    "Authorization",
    "x-api-key",
]
NOT_SECRET_KEYS = [
    "tokens_per_s",
    "max_tokens",
    "num_tokens",
    "special_tokens",
    "author",
    "authors",
    "tokenizer",
    "rng_key",
    "sort_key",
    "key",
    "url",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys(key):
    """Each documented secret key name is recognised."""
    assert is_secret_key(key) is True


@pytest.mark.parametrize("key", NOT_SECRET_KEYS)
def test_not_secret_keys(key):
    """Counts and look-alike names are not secrets."""
    assert is_secret_key(key) is False


def test_text_only_keys_keep_numbers_and_mappings():
    """Under ``tokens`` and ``auth`` only text is redacted; numbers and mappings are kept."""
    got = redact_record_strings(
        {
            "tokens": 4096,
            "auth": {"user": "me", "password": "pw"},
            "tokens_list": ["a"],
            "t": {"tokens": ["x", "y"]},
        }
    )
    assert got == {
        "tokens": 4096,
        "auth": {"user": "me", "password": REDACTED},
        "tokens_list": ["a"],
        "t": {"tokens": REDACTED},
    }


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (f"x {GHP} y", f"x {REDACTED} y"),
        ("gho_" + "a" * 36, REDACTED),
        (GITHUB_PAT, REDACTED),
        (f"HF={HF}", f"HF={REDACTED}"),
        (f"'{OPENAI}'", f"'{REDACTED}'"),
        ("sk-ant-api03-" + "z" * 40, REDACTED),
        (SLACK, REDACTED),
        ("xoxp-1-2-3-abcdef", REDACTED),
        (f"id {AWS}.", f"id {REDACTED}."),
        (JWT, REDACTED),
        ("Authorization: Bearer abcdefghijklmnop1234", f"Authorization: Bearer {REDACTED}"),
        ("https://user:pa@ss@host/p", f"https://{REDACTED}@host/p"),
        ("git+ssh://token@github.com/o/r", f"git+ssh://{REDACTED}@github.com/o/r"),
        ("https://medium.com/@user/post", "https://medium.com/@user/post"),
        ("mail me@example.com", "mail me@example.com"),
        ("https://host/?user=a&password=b&x=1", f"https://host/?user=a&password={REDACTED}&x=1"),
        ("--api-key abc --lr 0.1", f"--api-key {REDACTED} --lr 0.1"),
        ("--max-tokens 12 --tokens 5000", "--max-tokens 12 --tokens 5000"),
        ("task-abcdefghijklmnopqrstuvwxyz", "task-abcdefghijklmnopqrstuvwxyz"),
        ("hf_transfer enabled", "hf_transfer enabled"),
        (COMMIT, COMMIT),
        (REDACTED, REDACTED),
    ],
)
def test_redact_text(text, want):
    """Token shapes, URL credentials and secret flags are replaced; look-alikes are kept."""
    assert redact_text(text) == want
    assert redact_text(want) == want  # idempotent


def test_redact_argv_flags():
    """Values after secret flags are replaced; ``-p`` and counts are kept; input unchanged."""
    argv = ["x", "--wandb_key", "k1", "--auth", "u:p", "-p", "8080", "--tokens", "100"]
    argv += ["--token", "--verbose", "+wandb.api_key=k2", "--github-pat=k3", "--name=n"]
    before = list(argv)
    assert redact_argv(argv) == [
        "x",
        "--wandb_key",
        REDACTED,
        "--auth",
        REDACTED,
        "-p",
        "8080",
        "--tokens",
        "100",
        "--token",
        "--verbose",
        f"+wandb.api_key={REDACTED}",
        f"--github-pat={REDACTED}",
        "--name=n",
    ]
    assert argv == before


def test_redact_env_wandb_hex_and_urls():
    """A 40-hex value under a WANDB_ variable and URL credentials are replaced."""
    env = {"WANDB_KEY": WANDB_HEX, "GIT_COMMIT": COMMIT, "WANDB_BASE_URL": "http://a:b@h"}
    assert redact_env(env) == {
        "WANDB_KEY": REDACTED,
        "GIT_COMMIT": COMMIT,
        "WANDB_BASE_URL": f"http://{REDACTED}@h",
    }
