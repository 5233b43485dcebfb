"""Tests of config conversion (`to_config`) and secret redaction (`looks_secret`).

Expected values are written out by hand or computed with NumPy / the stdlib; every result of
`to_config` must also be accepted by the stdlib `json` module.
"""

import dataclasses
import datetime as dt
import enum
import json
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import jaxobs
from jaxobs import ConfigError, RunInfo
from jaxobs._src.formats.config import looks_secret, redact_env, to_config

REDACTED = "<redacted>"


def _json_roundtrip(value):
    """The value after the stdlib json module writes and reads it (NaN allowed)."""
    return json.loads(json.dumps(value, allow_nan=True))


def _assert_plain_json(value):
    """Assert that ``value`` is built only of dict/list/str/int/float/bool/None (exact types)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str, f"key {k!r} is {type(k).__name__}, not str"
            _assert_plain_json(v)
    elif isinstance(value, list):
        for v in value:
            _assert_plain_json(v)
    else:
        assert value is None or type(value) in (str, int, float, bool), (
            f"{value!r} is {type(value).__module__}.{type(value).__qualname__}"
        )


# ----------------------------------------------------------------------------- fixtures


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclasses.dataclass
class ModelConfig:
    features: tuple[int, ...] = (32, 64, 10)
    dropout: float = 0.1
    use_bias: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    seed: int = 0
    api_key: str = "sk-123"


@struct.dataclass
class FlaxConfig:
    learning_rate: float
    layers: tuple[int, ...]
    name: str = struct.field(pytree_node=False, default="mlp")


class Activation(str, enum.Enum):
    RELU = "relu"
    GELU = "gelu"


class Precision(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Schedule(enum.Enum):
    COSINE = "cosine"
    LINEAR = "linear"


class Initializer(enum.Enum):
    ZEROS = object()
    ONES = (1, 1)


# ----------------------------------------------------------------------------- plain values


@pytest.mark.parametrize(
    "value", [None, True, False, 0, -7, 2**70, 1.5, -0.0, "", "text", "ünïcode"]
)
def test_json_scalars_are_kept(value):
    """None, bools, ints, floats and strings are returned unchanged, with their exact type."""
    got = to_config(value)
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_floats_are_kept(value):
    """Non-finite floats stay floats (the TrainLog writer encodes them later)."""
    got = to_config(value)
    assert type(got) is float
    assert (math.isnan(got) and math.isnan(value)) or got == value
    json.dumps(got, allow_nan=True)


# ----------------------------------------------------------------------------- dataclasses


def test_nested_frozen_dataclass_becomes_nested_dict():
    """Nested (frozen) dataclasses become nested dicts, tuples lists, secrets redacted."""
    got = to_config(TrainConfig())
    assert got == {
        "model": {"features": [32, 64, 10], "dropout": 0.1, "use_bias": True},
        "optimizer": {"name": "adamw", "lr": 3e-4, "betas": [0.9, 0.999]},
        "seed": 0,
        "api_key": REDACTED,
    }
    _assert_plain_json(got)
    assert _json_roundtrip(got) == got


def test_flax_struct_dataclass_becomes_dict():
    """A flax struct.dataclass (pytree and static fields alike) becomes a dict."""
    got = to_config(FlaxConfig(learning_rate=0.05, layers=(8, 4)))
    assert got == {"learning_rate": 0.05, "layers": [8, 4], "name": "mlp"}
    _assert_plain_json(got)


def test_dataclass_class_itself_is_refused():
    """A dataclass *type* (not an instance) is not converted to a dict."""
    with pytest.raises(ConfigError, match=r"^config\.model: "):
        to_config({"model": ModelConfig})


# ----------------------------------------------------------------------------- numpy and jax


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.int8(-3), -3),
        (np.uint8(255), 255),
        (np.int64(2**40), 2**40),
        (np.float16(0.1), 0.0999755859375),
        (np.float32(0.1), 0.10000000149011612),
        (np.float64(0.25), 0.25),
        (np.bool_(True), True),
        (np.bool_(False), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, np.generic) else None,
)
def test_numpy_scalars_become_python_scalars(value, expected):
    """NumPy scalars become the Python scalar of the same value and kind."""
    got = to_config(value)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: jnp.float32(0.5), 0.5),
        (lambda: jnp.array(3), 3),
        (lambda: jnp.array(True), True),
        (lambda: jnp.int8(-2), -2),
    ],
    ids=["float32", "int", "bool", "int8"],
)
def test_jax_scalars_become_python_scalars(make, expected):
    """0-d jax arrays become the Python scalar of the same value and kind."""
    got = to_config(make())
    assert got == expected
    assert type(got) is type(expected)


def test_bfloat16_jax_scalar_becomes_python_float():
    """A bfloat16 jax scalar (the usual JAX mixed-precision dtype) becomes a Python float."""
    assert to_config({"loss_scale": jnp.bfloat16(0.5)}) == {"loss_scale": 0.5}


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(6, dtype=np.int32).reshape(2, 3),
        np.linspace(0.0, 1.0, 5, dtype=np.float32),
        np.array([[True, False]]),
        np.zeros((0, 3)),
        np.arange(1024, dtype=np.int16),
        jnp.arange(4.0).reshape(2, 2),
        jnp.array([1, 2, 3], dtype=jnp.uint8),
    ],
    ids=["int32-2x3", "float32-5", "bool-1x2", "empty", "1024-elements", "jax-2x2", "jax-u8"],
)
def test_small_arrays_become_nested_lists(arr):
    """Arrays of at most 1024 elements become the nested lists of `ndarray.tolist`."""
    expected = np.asarray(arr).tolist()
    got = to_config({"a": arr})
    assert got == {"a": expected}
    _assert_plain_json(got)


@pytest.mark.parametrize(
    "arr", [np.zeros(1025), np.ones((40, 40)), jnp.zeros((2, 600))], ids=["np", "np2d", "jax"]
)
def test_too_large_array_names_key_path(arr):
    """An array over 1024 elements raises ConfigError naming the key path and its shape."""
    with pytest.raises(ConfigError) as info:
        to_config({"data": {"init": [0, arr]}})
    message = str(info.value)
    assert message.startswith("config.data.init[1]: ")
    assert str(tuple(arr.shape)) in message
    assert "artifact" in message


def test_complex_array_is_refused():
    """A complex array cannot be stored and the error names the key."""
    with pytest.raises(ConfigError, match=r"^config\.z: .*complex"):
        to_config({"z": np.array([1 + 2j])})


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.dtype("float32"), "float32"),
        (np.dtype(np.int8), "int8"),
        (np.float16, "float16"),
        (np.bool_, "bool"),
        (jnp.float32, "float32"),
        (jnp.bfloat16, "bfloat16"),
        (jnp.int32, "int32"),
    ],
    ids=str,
)
def test_dtypes_become_their_name(dtype, expected):
    """NumPy dtypes, NumPy scalar types and jax dtypes (jnp.float32) become the dtype name."""
    assert to_config({"dtype": dtype}) == {"dtype": expected}


# ----------------------------------------------------------------------------- other types


def test_paths_become_strings():
    """pathlib paths (pure or concrete) become their string form."""
    got = to_config(
        {"data": pathlib.Path("/data/mnist"), "rel": pathlib.PurePosixPath("ckpt/step_10")}
    )
    assert got == {"data": "/data/mnist", "rel": "ckpt/step_10"}
    _assert_plain_json(got)


def test_dates_and_times_become_isoformat():
    """datetime, date and time values become their ISO 8601 text."""
    got = to_config(
        {
            "started": dt.datetime(2024, 5, 17, 13, 45, 30),
            "utc": dt.datetime(2024, 5, 17, 13, 45, 30, tzinfo=dt.timezone.utc),
            "day": dt.date(2024, 1, 2),
            "at": dt.time(7, 5),
        }
    )
    assert got == {
        "started": "2024-05-17T13:45:30",
        "utc": "2024-05-17T13:45:30+00:00",
        "day": "2024-01-02",
        "at": "07:05:00",
    }


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (Schedule.COSINE, "cosine"),
        (Precision.HIGH, 2),
        (Initializer.ZEROS, "ZEROS"),
        (Initializer.ONES, "ONES"),
    ],
    ids=["str-valued", "int-valued", "object-valued", "tuple-valued"],
)
def test_enums_become_value_or_name(member, expected):
    """Enums become their value when it is a JSON scalar, else their name."""
    got = to_config({"e": member})
    assert got == {"e": expected}
    _assert_plain_json(got)


def test_str_mixin_enum_compares_equal_to_its_value():
    """A str-mixin enum converts to something equal to, and dumped as, its value."""
    got = to_config({"act": Activation.GELU})
    assert got == {"act": "gelu"}
    assert json.dumps(got) == '{"act": "gelu"}'


def test_str_mixin_enum_becomes_plain_str():
    """A str-mixin enum member becomes a plain ``str`` (its value), like any other enum."""
    got = to_config({"act": Activation.GELU})
    _assert_plain_json(got)
    assert str(got["act"]) == "gelu"


def test_tuples_become_lists_recursively():
    """Tuples (nested, and inside lists) become lists."""
    got = to_config({"shape": (1, (2, 3)), "pairs": [(0, "a"), (1, "b")]})
    assert got == {"shape": [1, [2, 3]], "pairs": [[0, "a"], [1, "b"]]}
    _assert_plain_json(got)


def test_sets_become_sorted_lists():
    """Sets and frozensets become sorted lists."""
    got = to_config({"tags": {"b", "c", "a"}, "ids": frozenset({10, 2, 33, -1})})
    assert got == {"tags": ["a", "b", "c"], "ids": [-1, 2, 10, 33]}
    _assert_plain_json(got)


def test_mixed_type_set_is_sorted_deterministically():
    """A set of unorderable mixed types still converts, to a list holding every element."""
    got = to_config({"mixed": {3, "x", 1}})["mixed"]
    assert sorted(map(repr, got)) == sorted(["1", "3", "'x'"])
    assert to_config({"mixed": frozenset(["x", 1, 3])})["mixed"] == got


def test_int_and_enum_keys_become_strings():
    """Int keys become decimal text, bool keys true/false, enum keys their str value or name."""
    got = to_config(
        {
            0: "zero",
            np.int64(12): "twelve",
            True: "yes",
            Precision.HIGH: "high",
            Schedule.LINEAR: "lin",
        }
    )
    assert got == {"0": "zero", "12": "twelve", "true": "yes", "HIGH": "high", "linear": "lin"}
    _assert_plain_json(got)
    assert _json_roundtrip(got) == got


@pytest.mark.parametrize(
    "key",
    [1.5, None, (1, 2), b"raw", frozenset({1})],
    ids=["float", "None", "tuple", "bytes", "fs"],
)
def test_other_key_types_are_refused(key):
    """Keys that are not str/int/bool/enum raise ConfigError naming the mapping and the type."""
    with pytest.raises(ConfigError) as info:
        to_config({"optim": {key: 1}})
    message = str(info.value)
    assert message.startswith("config.optim: ")
    assert type(key).__name__ in message


def test_keys_that_collide_as_strings_are_refused():
    """An int key and a str key with the same text raise ConfigError instead of overwriting."""
    with pytest.raises(ConfigError, match=r"^config\.1: "):
        to_config({1: "a", "1": "b"})


def test_lambda_nested_deep_names_full_path_and_hint():
    """A lambda deep inside raises ConfigError with the full key path and a fix."""
    with pytest.raises(ConfigError) as info:
        to_config({"model": {"layers": [{"units": 4}, {"act": lambda x: x}]}})
    message = str(info.value)
    assert message.startswith("config.model.layers[1].act: ")
    assert "function" in message
    assert "pass its name as a string" in message


def test_lambda_at_first_layer_names_path():
    """A lambda in the first layer is named config.model.layers[0].act, with a hint."""
    with pytest.raises(ConfigError, match=r"^config\.model\.layers\[0\]\.act: .*name as a string"):
        to_config({"model": {"layers": [{"act": lambda x: x}]}})


def test_arbitrary_object_names_path_type_and_hint():
    """An arbitrary object raises ConfigError naming the path, its qualified type and a fix."""

    class Opaque:
        pass

    with pytest.raises(ConfigError) as info:
        to_config({"data": {"loader": Opaque()}})
    message = str(info.value)
    assert message.startswith("config.data.loader: ")
    assert "Opaque" in message
    assert "convert it to str, int or float" in message


def test_object_in_dataclass_field_names_path():
    """An unconvertible dataclass field is named by its field path."""

    @dataclasses.dataclass
    class Holder:
        fn: object

    with pytest.raises(ConfigError, match=r"^config\.inner\.fn: "):
        to_config({"inner": Holder(fn=print)})


def test_object_in_set_names_path():
    """An unconvertible set member names the set's key."""
    with pytest.raises(ConfigError, match=r"^config\.hooks"):
        to_config({"hooks": {len}})


def test_config_error_is_a_type_error():
    """ConfigError is a TypeError, so generic handlers catch it."""
    assert issubclass(ConfigError, TypeError)
    assert jaxobs.ConfigError is ConfigError


# ----------------------------------------------------------------------------- secrets

SECRET_KEYS = [
    "api_key",
    "WANDB_API_KEY",
    "hf_token",
    "HF_TOKEN",
    "password",
    "db_password",
    "client_secret",
    "secretKey",
    "apiKey",
    "wandbApiKey",
    "private_key",
    "access_token",
    "token_budget",  # the whole word "token" is in it
    "PASSWD",
    "credentials",
    "aws-access-key",
    "HFToken",
    "AWSSecretKey",
    "OpenAIAPIKey",
    "myAPIToken",
    "adminpassword",
]
NOT_SECRET_KEYS = [
    "max_tokens",
    "tokenizer",
    "num_tokens",
    "secretary",
    "keywords",
    "monkey",
    "key",
    "api",
    "lr",
    "private",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_looks_secret_true(key):
    """Keys with a secret word (or an api/private/access/secret + key pair) are secret."""
    assert looks_secret(key) is True


@pytest.mark.parametrize("key", NOT_SECRET_KEYS)
def test_looks_secret_false(key):
    """Keys whose words are not secret words are not secret (whole words only)."""
    assert looks_secret(key) is False


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_values_are_redacted_nested(key):
    """A non-empty value under a secret key is replaced, also deep inside lists and dicts."""
    config = {"top": {key: "s3cr3t"}, "runs": [{"sub": {key: 12345}}], "lr": 0.1}
    got = to_config(config)
    assert got == {"top": {key: REDACTED}, "runs": [{"sub": {key: REDACTED}}], "lr": 0.1}
    assert "s3cr3t" not in json.dumps(got)


@pytest.mark.parametrize("key", NOT_SECRET_KEYS)
def test_non_secret_values_are_kept(key):
    """Values under keys that are not secret are converted normally."""
    assert to_config({"top": {key: 512}}) == {"top": {key: 512}}


@pytest.mark.parametrize("empty", [None, ""])
def test_empty_secret_values_are_kept(empty):
    """An empty or missing secret (None, "") is kept, so users see it was not set."""
    assert to_config({"wandb": {"api_key": empty}, "HF_TOKEN": empty}) == {
        "wandb": {"api_key": empty},
        "HF_TOKEN": empty,
    }


def test_secret_container_value_is_redacted_whole():
    """A dict or list under a secret key is redacted as a whole."""
    got = to_config({"credentials": {"user": "me", "pw": "x"}, "tokens_ok": 1, "token": [1, 2]})
    assert got == {"credentials": REDACTED, "tokens_ok": 1, "token": REDACTED}


def test_secret_jax_array_value_is_redacted():
    """A jax array under a secret key is redacted."""
    assert to_config({"private_key": jnp.arange(4)}) == {"private_key": REDACTED}


def test_secret_numpy_array_value_is_redacted():
    """A multi-element NumPy array under a secret key is redacted, not an error."""
    assert to_config({"private_key": np.arange(4)}) == {"private_key": REDACTED}


def test_secret_dataclass_field_is_redacted():
    """A dataclass field with a secret name is redacted."""

    @dataclasses.dataclass
    class Auth:
        user: str = "me"
        client_secret: str = "abc"

    assert to_config({"auth": Auth()}) == {"auth": {"user": "me", "client_secret": REDACTED}}


def test_secret_value_that_cannot_be_converted_is_redacted_not_refused():
    """A secret value is redacted before conversion, so its type does not matter."""
    assert to_config({"api_key": object()}) == {"api_key": REDACTED}


def test_redact_env():
    """redact_env replaces non-empty secret values and keeps everything else as is."""
    env = {
        "WANDB_API_KEY": "abc",
        "HF_TOKEN": "hf_xyz",
        "GITHUB_TOKEN": "",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
        "AWS_SECRET_ACCESS_KEY": "aws",
    }
    got = redact_env(env)
    assert got == {
        "WANDB_API_KEY": REDACTED,
        "HF_TOKEN": REDACTED,
        "GITHUB_TOKEN": "",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
        "AWS_SECRET_ACCESS_KEY": REDACTED,
    }
    assert env["WANDB_API_KEY"] == "abc", "the input mapping must not be modified"
    assert list(got) == list(env)


# ----------------------------------------------------------------------------- json contract


def _kitchen_sink():
    return {
        "train": TrainConfig(),
        "flax": FlaxConfig(learning_rate=1e-3, layers=(2,)),
        "scalars": [np.int8(1), np.float16(2.5), np.float32(np.nan), np.bool_(False)],
        "jax": {"lr": jnp.float32(0.5), "steps": jnp.array(3), "w": jnp.ones((2, 2))},
        "path": pathlib.Path("runs/x"),
        "when": dt.datetime(2020, 1, 1),
        "enums": [Schedule.COSINE, Precision.LOW, Initializer.ZEROS, Activation.RELU],
        "sets": {3, 1, 2},
        "dtype": jnp.float32,
        "keys": {1: "a", Precision.HIGH: "b"},
        "inf": np.float64(-np.inf),
        "token": "hidden",
    }


def test_result_is_accepted_by_stdlib_json():
    """The converted kitchen-sink config is dumped and loaded back equal by stdlib json."""
    got = to_config(_kitchen_sink())
    text = json.dumps(got, allow_nan=True)
    back = json.loads(text)
    assert json.dumps(back, allow_nan=True) == text
    assert back["scalars"][:2] == [1, 2.5]
    assert math.isnan(back["scalars"][2])
    assert back["jax"] == {"lr": 0.5, "steps": 3, "w": [[1.0, 1.0], [1.0, 1.0]]}
    assert back["enums"] == ["cosine", 1, "ZEROS", "relu"]
    assert back["sets"] == [1, 2, 3]
    assert back["keys"] == {"1": "a", "HIGH": "b"}
    assert back["inf"] == -math.inf
    assert back["token"] == REDACTED
    assert back["train"]["api_key"] == REDACTED


def test_to_config_does_not_modify_input():
    """Conversion leaves the input config untouched."""
    config = {"a": [1, 2], "api_key": "k", "nested": {"t": (1,)}}
    to_config(config)
    assert config == {"a": [1, 2], "api_key": "k", "nested": {"t": (1,)}}


def test_custom_path_prefix_is_used_in_errors():
    """The ``path`` argument prefixes the key path in error messages."""
    with pytest.raises(ConfigError, match=r"^event\.payload\.fn: "):
        to_config({"payload": {"fn": len}}, "event")


# ----------------------------------------------------------------------------- RunInfo


def test_runinfo_converts_and_redacts_config():
    """RunInfo(config=...) stores the converted, redacted config."""
    info = RunInfo(
        project="p",
        config={
            "optimizer": OptimizerConfig(),
            "lr": np.float32(0.5),
            "steps": jnp.array(100),
            "HF_TOKEN": "hf_abc",
            "max_tokens": 256,
            "dir": pathlib.Path("out"),
        },
    )
    assert info.config == {
        "optimizer": {"name": "adamw", "lr": 3e-4, "betas": [0.9, 0.999]},
        "lr": 0.5,
        "steps": 100,
        "HF_TOKEN": REDACTED,
        "max_tokens": 256,
        "dir": "out",
    }
    _assert_plain_json(info.config)


def test_runinfo_bad_config_names_path():
    """RunInfo refuses an unconvertible config value with a ConfigError naming its path."""
    with pytest.raises(ConfigError, match=r"^config\.model\.layers\[0\]\.act: "):
        RunInfo(config={"model": {"layers": [{"act": lambda x: x}]}})


def test_runinfo_to_json_encodes_nonfinite_config_values():
    """RunInfo.to_json writes non-finite config floats as the TrainLog sentinel strings."""
    info = RunInfo(config={"a": np.float32(np.nan), "b": [math.inf, -math.inf, 1.0]})
    data = info.to_json()
    assert data["config"] == {"a": "NaN", "b": ["Infinity", "-Infinity", 1.0]}
    json.dumps(data, allow_nan=False)


def test_runinfo_json_roundtrip_with_nonfinite_config():
    """RunInfo survives to_json / stdlib json / from_json, NaN included."""
    info = RunInfo(project="p", name="n", tags=["a"], config={"x": math.nan, "y": [1, 2]})
    text = json.dumps(info.to_json(), allow_nan=False)
    back = RunInfo.from_json(json.loads(text))
    assert back == info
    # config is free-form JSON: the NaN comes back as its sentinel string, not a float
    assert back.config == {"x": "NaN", "y": [1, 2]}


def test_runinfo_json_roundtrip_keeps_sentinel_like_strings():
    """A config string that happens to read "NaN" is still a string after a round trip."""
    info = RunInfo(config={"fill": "NaN", "bound": "Infinity"})
    back = RunInfo.from_json(json.loads(json.dumps(info.to_json())))
    assert back.config == {"fill": "NaN", "bound": "Infinity"}
