"""Crash dumps: reading them, finding the first layer to diverge, the summary, the failure
signature plot, and `jaxobs crash show|plot`."""

import ast
import doctest
import json
import math
import pathlib
import subprocess

import numpy as np
import pytest
from helpers import PYTHON, REPO

from jaxobs import crash
from jaxobs.cli import main

LAYERS = ("Conv_0", "Conv_1", "Dense_0")
LEAVES = ("kernel", "bias")


def _json_value(v):
    """A float as the dump writes it: a number, a sentinel string, or null (None)."""
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def _dump_dict(steps, series, *, step=None, trigger=None, **fields):
    """A crash dump as the flight recorder writes it; ``series`` values may hold None."""
    steps = [int(s) for s in steps]
    data = {
        "format": "jaxobs.crash",
        "schema_version": "1.0",
        "created_ns": 1763700000000000000,
        "step": steps[-1] if step is None else step,
        "trigger": trigger
        or {
            "kind": "alert",
            "rule": "nonfinite",
            "severity": "critical",
            "message": "train/loss is NaN",
            "error": None,
        },
        "first_diverged": None,
        "thresholds": {"spike_factor": 10.0, "window": 50},
        "alerts": [],
        "run": {"project": "digits", "run_id": "r123", "name": "cnn-lr-0.5", "dir": "/nowhere"},
        "versions": {"python": "3.11.7", "jaxobs": "0.1.0"},
        "checkpoint": None,
        "recorder": {
            "capacity": 256,
            "steps": steps,
            "series": {k: [_json_value(v) for v in vals] for k, vals in series.items()},
        },
    }
    data.update(fields)
    return data


def _write(path, data) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _exploding(healthy=60, explode=5, seed=0):
    """Healthy steps, then Conv_1's gradients grow 10x a step and turn NaN; the loss follows.

    Returns (steps, series as float lists with NaN, the step Conv_1 first exceeds 10x)."""
    rng = np.random.default_rng(seed)
    n = healthy + explode
    steps = np.arange(n)
    series = {"train/loss": list(2.3 * np.exp(-steps / 40) + rng.uniform(0, 0.05, n))}
    grads = {}
    for li, layer in enumerate(LAYERS):
        for leaf in LEAVES:
            base = (1.0 + li) * (0.5 if leaf == "bias" else 1.0)
            g = base * rng.uniform(0.8, 1.2, n)
            nonfinite = np.zeros(n)
            if layer == "Conv_1":
                g[healthy:] = base * 10.0 ** np.arange(1, explode + 1) * 3
                g[-1], nonfinite[-1] = np.nan, 12
            if layer == "Dense_0":
                nonfinite[-1] = 3  # downstream, one step after Conv_1 blew past 10x
            grads[f"grads/{layer}/{leaf}/norm"] = g
            grads[f"grads/{layer}/{leaf}/nonfinite"] = nonfinite
            series[f"params/{layer}/{leaf}/norm"] = list(base * 10 + 0.01 * steps)
            series[f"updates/{layer}/update_ratio"] = list(rng.uniform(1e-4, 1e-3, n))
    series.update({k: list(v) for k, v in grads.items()})
    total = np.sqrt(sum(np.square(v) for k, v in grads.items() if k.endswith("/norm")))
    series["health/grad_norm"] = list(total)
    series["train/loss"][-1] = math.nan
    return steps, series, healthy


@pytest.fixture
def exploding_dump(tmp_path):
    """A realistic dump in a run directory: ``<run>/crash/crash-64.json``."""
    steps, series, _ = _exploding()
    alerts = [
        {"rule": "spike", "severity": "warning", "step": 61, "layer": "Conv_1",
         "message": "grad norm of Conv_1 jumped 30x", "values": {"ratio": 30.0}},
        {"rule": "nonfinite", "severity": "critical", "step": 64, "layer": None,
         "message": "train/loss is NaN", "values": {"value": "NaN"}},
    ]  # fmt: skip
    checkpoint = {"path": "crash/ckpt-60", "step": 60}
    data = _dump_dict(steps, series, alerts=alerts, checkpoint=checkpoint)
    return _write(tmp_path / "run" / "crash" / "crash-64.json", data)


# ----------------------------------------------------------------------------- load_dump


def test_load_round_trip_decodes_sentinels_nulls_and_present(tmp_path):
    """Numbers, "NaN"/"Infinity"/"-Infinity" and null decode; present tells null from NaN."""
    raw = [2.5, "NaN", None, "Infinity", "-Infinity", 3]
    data = _dump_dict([3, 4, 5, 6, 7, 9], {})
    data["recorder"]["series"]["train/loss"] = raw
    data["first_diverged"] = {
        "layer": "Conv_1", "group": "grads", "step": 5, "ratio": "Infinity",
        "baseline": 0.8, "nonfinite": True, "future": 1,
    }  # fmt: skip
    data["something_new"] = {"x": 1}
    data["trigger"]["extra"] = "kept"
    data["recorder"]["more"] = []
    dump = crash.load_dump(_write(tmp_path / "crash-9.json", data))
    assert dump.steps.dtype == np.int64 and dump.steps.tolist() == [3, 4, 5, 6, 7, 9]
    values = dump.series["train/loss"]
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, [2.5, np.nan, np.nan, np.inf, -np.inf, 3.0])
    assert dump.present["train/loss"].tolist() == [True, True, False, True, True, True]
    assert dump.step == 9 and dump.trigger["rule"] == "nonfinite"
    assert dump.trigger["extra"] == "kept"
    assert dump.first_diverged["ratio"] == math.inf and dump.first_diverged["layer"] == "Conv_1"
    assert dump.run["name"] == "cnn-lr-0.5" and dump.versions["python"] == "3.11.7"
    assert dump.thresholds == {"spike_factor": 10.0, "window": 50}
    assert dump.checkpoint is None and dump.checkpoint_path is None
    assert dump.path == tmp_path / "crash-9.json"


def test_load_fills_optional_fields_and_resolves_the_checkpoint(tmp_path):
    """A minimal dump reads; the checkpoint path is relative to the run directory."""
    data = {
        "format": "jaxobs.crash",
        "schema_version": "1.3",
        "step": 7,
        "trigger": {"kind": "sigterm"},
        "checkpoint": {"path": "crash/ckpt-5", "step": 5},
    }
    dump = crash.load_dump(_write(tmp_path / "run" / "crash" / "crash-7.json", data))
    assert dump.trigger["rule"] is None and dump.trigger["message"] == ""
    assert dump.trigger_label() == "sigterm"
    assert dump.alerts == [] and dump.series == {} and dump.steps.tolist() == []
    assert dump.checkpoint_path == tmp_path / "run" / "crash" / "ckpt-5"


def _bad_dumps(tmp_path):
    """(path, fragments its error must contain) for files that are not good dumps."""
    good = _dump_dict([0, 1, 2, 3], {"train/loss": [1.0, 2.0, 3.0, 4.0]})
    cases = []

    def case(name, fragments, data=None, text=None):
        path = tmp_path / name
        path.write_text(json.dumps(data) if text is None else text, encoding="utf-8")
        cases.append((path, [str(path), *fragments]))

    case("notjson.json", ["notjson.json:2:", "not valid JSON"], text='{"format":\n ,}')
    case("list.json", ["not a jaxobs crash dump"], data=[1, 2])
    case("trainlog.json", ["not a jaxobs crash dump", '"jaxobs.crash"'], data={"series": []})
    case("wrong.json", ["not a jaxobs crash dump"], data={**good, "format": "jaxobs.trainlog"})
    case("future.json", ["upgrade jaxobs", "2.0"], data={**good, "schema_version": "2.0"})
    ragged = json.loads(json.dumps(good))
    ragged["recorder"]["series"]["train/loss"].pop()
    case("ragged.json", ['recorder.series["train/loss"]', "expected 4 values", "got 3"], ragged)
    word = json.loads(json.dumps(good))
    word["recorder"]["series"]["train/loss"][3] = "lots"
    case("word.json", ['recorder.series["train/loss"][3]', "'lots'"], data=word)
    case("nostep.json", ["step: missing"], data={k: v for k, v in good.items() if k != "step"})
    unsorted = json.loads(json.dumps(good))
    unsorted["recorder"]["steps"] = [0, 2, 1, 3]
    case("unsorted.json", ["recorder.steps[2]", "ascending"], data=unsorted)
    case("badalert.json", ["alerts[0]", "expected an object"], data={**good, "alerts": [3]})
    return cases


def test_bad_files_give_errors_naming_the_file_and_field(tmp_path):
    """Not JSON, not a dump, a newer major version, ragged or wrong values: clear errors."""
    for path, fragments in _bad_dumps(tmp_path):
        with pytest.raises(crash.CrashDumpError) as info:
            crash.load_dump(path)
        for fragment in fragments:
            assert fragment in str(info.value), (fragment, str(info.value))
    assert issubclass(crash.CrashDumpVersionError, crash.CrashDumpError)
    assert issubclass(crash.CrashDumpError, ValueError)


def test_a_trainlog_read_as_a_dump_says_what_it_is(tmp_path):
    """A TrainLog given to the crash reader: the error says so and names the command to use."""
    path = _write(tmp_path / "trainlog.json", {"format": "jaxobs.trainlog", "series": []})
    with pytest.raises(crash.CrashDumpError) as info:
        crash.load_dump(path)
    text = str(info.value)
    assert text.startswith(f'{path}: not a jaxobs crash dump: format "jaxobs.trainlog"')
    assert f"this is a TrainLog: use `jaxobs show {path}`" in text


def test_a_directory_is_not_a_dump(tmp_path):
    """load_dump of a directory names it (find_dump is what picks a run directory's dump)."""
    with pytest.raises(IsADirectoryError, match="is a directory; expected a jaxobs crash dump"):
        crash.load_dump(tmp_path)


def test_null_is_accepted_only_where_the_format_allows_it(tmp_path):
    """A null step or trigger kind is an error naming the field; a null rule is fine."""
    good = _dump_dict([0], {"train/loss": [1.0]})
    good["trigger"]["rule"] = None
    assert crash.load_dump(_write(tmp_path / "ok.json", good)).trigger["rule"] is None
    with pytest.raises(crash.CrashDumpError, match="step: expected an integer step, got null"):
        crash.load_dump(_write(tmp_path / "step.json", {**good, "step": None}))
    bad = json.loads(json.dumps(good))
    bad["trigger"]["kind"] = None
    with pytest.raises(crash.CrashDumpError, match=r"trigger\.kind: expected a string, got null"):
        crash.load_dump(_write(tmp_path / "kind.json", bad))


def test_missing_file_is_file_not_found(tmp_path):
    """A path that does not exist raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        crash.load_dump(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- layer_norms


def test_layer_norms_match_numpy():
    """Each layer's norm is sqrt(sum of its leaves' norm**2), layers in first-seen order."""
    rng = np.random.default_rng(1)
    n = 12
    leaves = {
        "Block_0/Dense_0/kernel": rng.uniform(0.1, 5, n),
        "Block_0/Dense_0/bias": rng.uniform(0.1, 5, n),
        "Conv_0/kernel": rng.uniform(0.1, 5, n),
        "Conv_0/bias": rng.uniform(0.1, 5, n),
        "scale": rng.uniform(0.1, 5, n),  # a one-part path is its own layer
    }
    series = {f"grads/{leaf}/norm": v for leaf, v in leaves.items()}
    series["grads/Conv_0/kernel/rms"] = np.full(n, 1e9)  # other statistics are ignored
    series["params/Conv_0/kernel/norm"] = np.full(n, 1e9)  # and so are other groups
    series["train/loss"] = np.ones(n)
    norms = crash.layer_norms(series)
    assert list(norms) == ["Block_0/Dense_0", "Conv_0", "scale"]
    for layer, members in [
        ("Block_0/Dense_0", ["Block_0/Dense_0/kernel", "Block_0/Dense_0/bias"]),
        ("Conv_0", ["Conv_0/kernel", "Conv_0/bias"]),
        ("scale", ["scale"]),
    ]:
        expected = np.sqrt(np.sum(np.square(np.stack([leaves[m] for m in members])), axis=0))
        np.testing.assert_allclose(norms[layer], expected, rtol=1e-12)
    params = crash.layer_norms(series, group="params")
    np.testing.assert_allclose(params["Conv_0"], 1e9)


def test_layer_norms_mark_nonfinite_and_unrecorded_steps():
    """A leaf with nonfinite > 0 or an inf/NaN norm makes its layer inf; gaps stay NaN."""
    nan = np.nan
    series = {
        "grads/A/kernel/norm": np.array([3.0, 3.0, nan, 3.0, 3.0, np.inf]),
        "grads/A/kernel/nonfinite": np.array([0.0, 5.0, nan, 0.0, 0.0, 0.0]),
        "grads/A/bias/norm": np.array([4.0, 4.0, nan, nan, 4.0, 4.0]),
        "grads/A/bias/nonfinite": np.array([0.0, 0.0, nan, 0.0, 0.0, 0.0]),
        "grads/B/w/norm": np.array([1e200, 1e200, 0.0, 0.0, 0.0, 0.0]),  # no overflow
    }
    norms = crash.layer_norms(series)
    # step 3: the bias norm is NaN although its nonfinite count was recorded: non-finite
    np.testing.assert_array_equal(norms["A"], [5.0, np.inf, nan, np.inf, 5.0, np.inf])
    np.testing.assert_allclose(norms["B"], [1e200, 1e200, 0, 0, 0, 0])
    # with present masks, a recorded NaN is non-finite and a null is a gap
    present = {k: np.ones(6, bool) for k in series}
    present["grads/A/bias/norm"] = np.array([1, 1, 0, 1, 1, 1], bool)
    present["grads/A/bias/nonfinite"] = np.array([1, 1, 0, 0, 1, 1], bool)
    present["grads/A/kernel/norm"] = np.array([1, 1, 0, 1, 1, 1], bool)
    present["grads/A/kernel/nonfinite"] = np.array([1, 1, 0, 1, 1, 1], bool)
    norms = crash.layer_norms(series, present=present)
    np.testing.assert_array_equal(norms["A"], [5.0, np.inf, nan, np.inf, 5.0, np.inf])


# ----------------------------------------------------------------------------- rank_by_peak


def test_rank_by_peak_puts_non_finite_layers_first_then_the_largest():
    """Layers with an inf come first, then by largest finite value; ties keep their order."""
    from jaxobs._src.analysis.diagnose import rank_by_peak

    nan, inf = math.nan, math.inf
    norms = {
        "A": np.array([1.0, 2.0, nan]),
        "B": np.array([5.0, inf, 1.0]),
        "C": np.array([nan, nan, nan]),
        "D": np.array([3.0, 9.0, 2.0]),
        "E": np.array([inf, 0.0, 0.0]),
        "F": np.array([2.0, 1.0, 1.0]),
    }

    def reference(window):
        def key(name):
            values = [float(v) for v in norms[name][window]]
            finite = [v for v in values if math.isfinite(v)]
            return (any(math.isinf(v) for v in values), max(finite) if finite else -inf)

        keyed = [(key(name), -i, name) for i, name in enumerate(norms)]
        return [name for *_, name in sorted(keyed, reverse=True)]

    assert rank_by_peak(norms) == reference(slice(None)) == ["B", "E", "D", "A", "F", "C"]
    first = slice(0, 1)
    assert rank_by_peak(norms, first) == reference(first) == ["E", "B", "D", "F", "A", "C"]


# ----------------------------------------------------------------------------- first_diverged


def _grads(**layers):
    """``{"grads/<layer>/kernel/norm": values}`` for each layer."""
    return {f"grads/{name}/kernel/norm": np.asarray(v, float) for name, v in layers.items()}


def test_first_diverged_earliest_step_wins():
    """A layer that passes 10x its baseline first wins over a later, larger explosion."""
    steps = np.arange(100, 112)
    a = np.r_[np.full(10, 2.0), 2000.0, np.inf]
    b = np.r_[np.full(9, 1.0), 25.0, 30.0, np.inf]
    hit = crash.first_diverged(steps, _grads(A=a, B=b))
    assert hit == {
        "layer": "B", "group": "grads", "step": 109, "ratio": 25.0, "baseline": 1.0,
        "nonfinite": False,
    }  # fmt: skip


def test_first_diverged_tie_goes_to_larger_ratio_then_forward_order():
    """At the same step the larger ratio wins; non-finite beats any ratio; then order."""
    steps = np.arange(10)
    base = np.ones(10)
    a, b = base.copy(), base.copy()
    a[8:], b[8:] = 20.0, 40.0
    assert crash.first_diverged(steps, _grads(A=a, B=b))["layer"] == "B"
    c = base.copy()
    c[8:] = np.inf
    assert crash.first_diverged(steps, _grads(A=a, B=b, C=c))["layer"] == "C"
    d = base.copy()
    d[8:] = np.inf
    hit = crash.first_diverged(steps, _grads(A=a, D=d, C=c))
    assert hit["layer"] == "D" and hit["ratio"] == math.inf and hit["nonfinite"] is True
    # grads come before params at the same step when both are non-finite
    series = {**_grads(A=c), "params/P/kernel/norm": c, "params/A/kernel/norm": c}
    assert crash.first_diverged(steps, series)["group"] == "grads"
    hit = crash.first_diverged(steps, series, groups=("params", "grads"))
    assert (hit["group"], hit["layer"]) == ("params", "P")


def test_first_diverged_counts_a_nonfinite_leaf_with_finite_norm():
    """A leaf whose nonfinite count is > 0 diverges even though its norm looks normal."""
    steps = np.arange(20)
    series = _grads(A=np.ones(20), B=np.ones(20))
    nonfinite = np.zeros(20)
    nonfinite[13] = 1
    series["grads/B/kernel/nonfinite"] = nonfinite
    hit = crash.first_diverged(steps, series)
    assert (hit["layer"], hit["step"], hit["nonfinite"]) == ("B", 13, True)
    assert hit["ratio"] == math.inf and hit["baseline"] == 1.0


def test_first_diverged_ignores_growth_below_the_factor():
    """A layer that only grows 5x is not diverged with factor 10, but is with factor 4."""
    steps = np.arange(30)
    a = np.r_[np.full(20, 2.0), np.full(10, 10.0)]
    assert crash.first_diverged(steps, _grads(A=a)) is None
    hit = crash.first_diverged(steps, _grads(A=a), factor=4.0)
    assert (hit["step"], hit["ratio"], hit["baseline"]) == (20, 5.0, 2.0)


def test_first_diverged_is_none_on_a_healthy_dump():
    """Noisy but steady norms, gaps and an all-NaN layer: nothing diverged, no warnings."""
    rng = np.random.default_rng(3)
    steps = np.arange(0, 400, 2)
    a = rng.uniform(0.5, 2.0, steps.size)
    a[::7] = np.nan  # not recorded
    series = {**_grads(A=a, Empty=np.full(steps.size, np.nan)), "train/loss": np.ones(200)}
    series["params/A/kernel/norm"] = np.linspace(10, 12, steps.size)
    assert crash.first_diverged(steps, series) is None
    assert crash.first_diverged(steps, {}) is None


def test_first_diverged_baseline_is_the_median_of_the_steps_just_before():
    """The onset's baseline is the median of the `baseline_steps` recorded values before it,
    and the growth must last until the end of the recording."""
    nan = np.nan
    # steps 0-1 not recorded; then 1, 3, 2, 100, 24, 26: step 5 against median(1, 3, 2)
    a = np.array([nan, nan, 1.0, 3.0, 2.0, 100.0, 24.0, 26.0])
    hit = crash.first_diverged(np.arange(8), _grads(A=a), baseline_steps=4)
    assert (hit["step"], hit["baseline"]) == (5, 2.0) and hit["ratio"] == 50.0
    # with a window of 2 the baseline is median(3, 2) = 2.5: 24 is not above 25
    assert crash.first_diverged(np.arange(8), _grads(A=a), baseline_steps=2) is None
    # a run that diverges at its second step is judged against its first step only
    early = np.array([1.0, 40.0, 900.0])
    hit = crash.first_diverged(np.arange(3), _grads(A=early))
    assert (hit["step"], hit["baseline"], hit["ratio"]) == (1, 1.0, 40.0)
    # growth that does not last (early training) is not a divergence
    transient = np.r_[np.ones(5), np.full(5, 30.0), np.ones(10)]
    assert crash.first_diverged(np.arange(20), _grads(A=transient)) is None
    # the window of a layer with a zero baseline only counts non-finite values
    z = np.array([0.0, 0.0, 0.0, 0.0, 5.0, np.inf])
    hit = crash.first_diverged(np.arange(6), _grads(Z=z))
    assert (hit["step"], hit["baseline"], hit["nonfinite"]) == (5, 0.0, True)


def test_first_diverged_checks_its_arguments():
    """Wrong lengths and non-positive settings are refused with a message."""
    with pytest.raises(ValueError, match="3 steps"):
        crash.first_diverged(np.arange(3), _grads(A=np.ones(4)))
    with pytest.raises(ValueError, match="factor"):
        crash.first_diverged(np.arange(4), _grads(A=np.ones(4)), factor=0)
    with pytest.raises(ValueError, match="baseline_steps"):
        crash.first_diverged(np.arange(4), _grads(A=np.ones(4)), baseline_steps=0)


def test_first_diverged_on_the_realistic_dump(exploding_dump):
    """The exploding layer is found at the first step past 10x, before the NaN."""
    _, _, healthy = _exploding()
    dump = crash.load_dump(exploding_dump)
    hit = crash.first_diverged(dump.steps, dump.series, present=dump.present)
    assert (hit["layer"], hit["group"], hit["step"], hit["nonfinite"]) == (
        "Conv_1", "grads", healthy, False,
    )  # fmt: skip
    grads = {k: v for k, v in dump.series.items() if k.startswith("grads/Conv_1/")}
    norms = [v for k, v in grads.items() if k.endswith("/norm")]
    layer = np.sqrt(np.sum(np.square(np.stack(norms)), axis=0))
    baseline = np.median(layer[healthy - 8 : healthy])
    assert hit["baseline"] == pytest.approx(baseline, rel=1e-12)
    assert hit["ratio"] == pytest.approx(layer[healthy] / baseline, rel=1e-12)


# ----------------------------------------------------------------------------- summary


def test_summary_mentions_trigger_layer_step_alerts_and_checkpoint(exploding_dump):
    """The report names the trigger, the first layer to diverge and its step, and more."""
    dump = crash.load_dump(exploding_dump)
    text = crash.summary(dump)
    for fragment in (
        "digits/cnn-lr-0.5 (run id r123)",
        "alert (rule nonfinite, critical) at step 64",
        "train/loss is NaN",
        "grads of Conv_1 at step 60",
        "(computed from the recorder)",
        "grad norm of Conv_1 jumped 30x",
        "crash/ckpt-60 (step 60)",
        "python 3.11.7",
        "65 steps (0 to 64)",
        "last 8 recorded steps:",
    ):
        assert fragment in text, (fragment, text)
    lines = text.splitlines()
    assert lines.index(next(x for x in lines if "jumped 30x" in x)) < lines.index(
        next(x for x in lines if x.strip().startswith("step     64"))
    )  # alerts in order, oldest first
    table = lines[lines.index("last 8 recorded steps:") + 1 :]
    header = table[0].split()
    assert header[:3] == ["step", "train/loss", "health/grad_norm"]
    assert "Conv_1" in table[0] and "*" in table[0]
    rows = [r.split() for r in table[1:9]]
    assert [r[0] for r in rows] == [str(s) for s in range(57, 65)]
    assert rows[-1][1] == "nan" and rows[-1][3] == "inf"  # loss NaN, Conv_1 non-finite
    assert "\x1b" not in text  # plain text, no colour codes


def test_summary_uses_the_dumps_own_verdict(tmp_path):
    """When the dump carries first_diverged, the summary reports it as written."""
    data = _dump_dict([0, 1], {"train/loss": [1.0, None]})
    data["first_diverged"] = {
        "layer": "Dense_7", "group": "params", "step": 1, "ratio": 6.5e5, "baseline": 0.8,
        "nonfinite": False,
    }  # fmt: skip
    text = crash.summary(crash.load_dump(_write(tmp_path / "crash-1.json", data)))
    assert "params of Dense_7 at step 1: norm 6.500e+05x its baseline 0.8" in text
    assert "computed" not in text
    assert text.splitlines()[-2].split() == ["1", "-"]  # not recorded is "-", not "nan"


# ----------------------------------------------------------------------------- plot


def _read_png(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def _check_png(path):
    image = _read_png(path)
    assert abs(image.shape[0] - 880) <= 3 and abs(image.shape[1] - 1100) <= 3, image.shape
    rgb = image[..., :3]
    assert rgb.std() > 0.01  # not blank
    red = (rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.15) & (rgb[..., 2] < 0.15)
    assert red.sum() > 150, red.sum()  # the trigger line on each of the three panels
    return image, red


def test_plot_writes_the_failure_signature_next_to_the_dump(exploding_dump):
    """The PNG is 1100x880, not blank, and has the red trigger line."""
    dump = crash.load_dump(exploding_dump)
    path = crash.plot(dump)
    assert path == exploding_dump.with_suffix(".png")
    _, red = _check_png(path)
    # the dashed line spans the three panels: red pixels in the top, middle and bottom thirds
    rows = np.flatnonzero(red.any(axis=1))
    assert rows.min() < 300 and rows.max() > 600


def test_plot_edge_cases(tmp_path):
    """One recorded step, all-NaN values, no params group, no layers at all: still a plot."""
    one = _dump_dict([5], {"train/loss": [2.0], "grads/A/kernel/norm": [1.0]})
    nan = _dump_dict(
        range(6),
        {
            "train/loss": [math.nan] * 6,
            "health/grad_norm": [None] * 6,
            "grads/A/kernel/norm": [math.nan] * 6,
            "grads/A/kernel/nonfinite": [4] * 6,
            "params/A/kernel/norm": [None] * 6,
        },
    )
    ratios = _dump_dict(
        range(20),
        {
            "train/loss": [1.0 - 0.01 * i for i in range(20)],
            "grads/A/kernel/norm": [1.0] * 19 + [math.inf],
            "updates/A/update_ratio": [1e-3] * 20,
        },
    )
    bare = _dump_dict(range(3), {"health/loss_z": [0.1, -0.3, 5.0]}, step=10)
    empty = _dump_dict([0], {}, step=0)
    empty["recorder"]["steps"] = []
    for name, data in [("one", one), ("nan", nan), ("ratios", ratios), ("bare", bare)]:
        dump = crash.load_dump(_write(tmp_path / f"{name}.json", data))
        out = crash.plot(dump, tmp_path / "pngs" / f"{name}.png")
        assert out == tmp_path / "pngs" / f"{name}.png"
        _check_png(out)
    dump = crash.load_dump(_write(tmp_path / "empty.json", empty))
    _check_png(crash.plot(dump, tmp_path / "empty.png"))


def test_plot_leaves_only_the_image(exploding_dump):
    """The image is written through a temporary file that does not stay behind."""
    crash.plot(crash.load_dump(exploding_dump))
    names = sorted(p.name for p in exploding_dump.parent.iterdir())
    assert names == ["crash-64.json", "crash-64.png"]


def test_plot_refuses_an_unknown_image_type(exploding_dump, tmp_path):
    """An output suffix matplotlib cannot write is an error, not a mislabeled PNG."""
    with pytest.raises(ValueError, match=r"\.xyz"):
        crash.plot(crash.load_dump(exploding_dump), tmp_path / "out.xyz")
    assert not (tmp_path / "out.xyz").exists()


def test_docstring_examples_run():
    """The examples in jaxobs.crash's docstrings run and print what they say."""
    result = doctest.testmod(crash, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0


def test_crash_module_imports_neither_jax_nor_matplotlib():
    """jaxobs.crash (and the modules behind it) imports jax nowhere and matplotlib only
    inside `plot`."""
    src = REPO / "jaxobs" / "_src"
    files = [
        REPO / "jaxobs" / "crash.py",
        src / "formats" / "crash_dump.py",
        src / "analysis" / "diagnose.py",
        src / "analysis" / "crash_summary.py",
        src / "analysis" / "crash_plot.py",
    ]
    top_level, anywhere = set(), set()
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                roots = {(n or "").split(".")[0] for n in names}
                anywhere |= roots
                if node in tree.body:
                    top_level |= roots
    assert "jax" not in anywhere
    assert "matplotlib" in anywhere and "matplotlib" not in top_level
    out = subprocess.run(
        [PYTHON, "-c", "import sys, jaxobs.crash; print('matplotlib' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


# ----------------------------------------------------------------------------- the command


def test_cli_show_prints_the_summary(exploding_dump, capsys):
    """`jaxobs crash show DUMP` prints the summary and nothing on stderr."""
    assert main(["crash", "show", str(exploding_dump)]) == 0
    out, err = capsys.readouterr()
    assert out == crash.summary(crash.load_dump(exploding_dump))
    assert err == ""


def test_cli_plot_writes_the_image_and_prints_its_path(exploding_dump, tmp_path, capsys):
    """`jaxobs crash plot DUMP [-o OUT]` writes the PNG and prints where."""
    assert main(["crash", "plot", str(exploding_dump)]) == 0
    default = exploding_dump.with_suffix(".png")
    assert capsys.readouterr().out.strip() == str(default)
    _check_png(default)
    out = tmp_path / "figs" / "sig.png"
    assert main(["crash", "plot", str(exploding_dump), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    _check_png(out)


def test_cli_run_directory_uses_the_newest_dump(tmp_path, capsys):
    """A run directory (or its crash/ folder) means its dump with the largest step."""
    run = tmp_path / "run"
    for step in (9, 10, 2):  # 10 is newest although "crash-9" sorts after it as text
        data = _dump_dict(range(step + 1), {"train/loss": [1.0] * (step + 1)})
        data["trigger"]["message"] = f"marker-{step}"
        _write(run / "crash" / f"crash-{step}.json", data)
    (run / "crash" / "crash-99.png").write_bytes(b"")  # not a dump
    (run / "crash" / "ckpt-11").mkdir()
    for target in (run, run / "crash"):
        assert main(["crash", "show", str(target)]) == 0
        out = capsys.readouterr().out
        assert "marker-10" in out and "crash-10.json" in out
    assert crash.find_dump(run) == run / "crash" / "crash-10.json"


def _one_error_line(capsys, fragment):
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxobs: error: "), err
    assert fragment in lines[0], (fragment, lines[0])
    assert out == ""


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    """Missing files, non-dumps, newer versions, runs without dumps: one line, status 2."""
    (tmp_path / "run_without_dumps").mkdir()
    trainlog = _write(tmp_path / "trainlog.json", {"format": "jaxobs.trainlog", "series": []})
    future = _write(tmp_path / "future.json", {**_dump_dict([0], {}), "schema_version": "3.1"})
    ragged = _dump_dict([0, 1], {"train/loss": [1.0, 2.0]})
    ragged["recorder"]["series"]["train/loss"] = [1.0]
    ragged = _write(tmp_path / "run2" / "crash" / "crash-1.json", ragged)
    cases = [
        (tmp_path / "missing", "no such file or directory"),
        (tmp_path / "run_without_dumps", "no crash dumps"),
        (trainlog, "not a jaxobs crash dump"),
        (future, "upgrade jaxobs"),
        (tmp_path / "run2", 'recorder.series["train/loss"]'),
    ]
    for path, fragment in cases:
        for command in ("show", "plot"):
            assert main(["crash", command, str(path)]) == 2, (command, path)
            _one_error_line(capsys, fragment)


@pytest.mark.parametrize(
    ("argv", "hint"),
    [(["crash"], "see jaxobs crash -h"), (["crash", "plot"], "see jaxobs crash plot -h")],
)
def test_cli_crash_usage_errors_exit_2(argv, hint, capsys):
    """A missing subcommand or argument is one usage line pointing at the right help."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _one_error_line(capsys, hint)
