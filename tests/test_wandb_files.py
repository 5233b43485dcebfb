"""The offline-run reader in wandb_files.py, checked against wandb 0.31.0 itself.

Each test drives the real wandb API offline in a temporary directory and compares what the
reader decodes with what was passed to wandb: the values handed to wandb are the reference.
"""

from __future__ import annotations

import base64
import hashlib
import math
import shutil
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")

from wandb_files import (  # noqa: E402
    BLOCK_SIZE,
    CRC_VARIANTS,
    FIRST,
    FULL,
    LAST,
    MIDDLE,
    SUPPORTED_WANDB_VERSION,
    OfflineRun,
    WandbFormatError,
    find_offline_runs,
    history_column,
    isolate,
    iter_chunks,
    read_offline_run,
    read_records,
    subkeys,
    wait_for_exit,
    wandb_file,
)

pytestmark = pytest.mark.skipif(
    wandb.__version__ != SUPPORTED_WANDB_VERSION,
    reason=f"the reader knows only wandb {SUPPORTED_WANDB_VERSION}'s internal format",
)

# --- running wandb offline, isolated ------------------------------------------------------------


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """What wandb does to a logged dict: nested dicts become "/"-joined keys."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[prefix + key] = value
    return flat


def _same(got: Any, want: Any) -> bool:
    """Equal, with NaN equal to NaN and bools kept apart from numbers."""
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_same(got[k], want[k]) for k in want)
        )
    if isinstance(want, (list, tuple)):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_same(g, w) for g, w in zip(got, want, strict=True))
        )
    return got == want


def _assert_same(got: Any, want: Any, what: str) -> None:
    assert _same(got, want), f"{what}: read back {got!r}, logged {want!r}"


# --- the main run: everything a bridge logs ----------------------------------------------------

N_TRAIN = 300
T0 = 1_780_000_000.0
HIST_COUNTS = np.array([3, 0, 7, 12, 5, 1])
HIST_EDGES = np.array([-1.5, -1.0, -0.25, 0.0, 0.5, 1.75, 4.0])
CONFIG = {
    "lr": 3e-4,
    "batch_size": 32,
    "model": {"depth": 4, "act": "gelu", "dropout": 0.1},
    "seeds": [0, 1, 2],
    "with_value_key": {"value": 5, "other": "kept as is"},
}


def _train_row(i: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "train/loss": 2.0 * math.exp(-i / 90.0) + (i % 7) * 1e-3,
        "trainer/step": i,
        "_timestamp": T0 + 0.25 * i,
        "opt": {"lr": 3e-4 * min(1.0, (i + 1) / 50), "mom": {"beta": 0.9}},
    }
    if i == 5:
        row["train/loss"] = float("nan")
    if i == 7:
        row["train/grad_norm"] = float("inf")
    if i == 8:
        row["train/grad_norm"] = -math.inf
    if i % 3 == 0:
        row["train/grad_norm"] = math.sqrt(i + 0.5) / 3.0
    if i == 10:
        row["big_int"] = 2**53 + 1
        row["phase"] = "warmup"
        row["flag"] = True
        row["few"] = [1.5, -2.25, 3.0]
    if i == 100:
        row["weights"] = wandb.Histogram(np_histogram=(HIST_COUNTS, HIST_EDGES))
    return row


def _val_row(i: int) -> dict[str, Any]:
    return {"val/acc": 0.5 + 0.4 * math.sin(i / 40.0), "trainer/step": i, "_timestamp": T0 + i}


def _expected_flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = _flatten(row)
    for key, value in list(flat.items()):
        if isinstance(value, wandb.Histogram):
            del flat[key]
            flat[f"{key}/_type"] = "histogram"
            flat[f"{key}/bins"] = HIST_EDGES.tolist()
            flat[f"{key}/values"] = HIST_COUNTS.tolist()
    return flat


@dataclass
class MainRun:
    root: Path
    dirs: dict[str, Path]
    run_id: str
    logged: list[dict[str, Any]]  # flat, as wandb should store each row
    artifact_bytes: bytes
    run: OfflineRun


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> MainRun:
    root = tmp_path_factory.mktemp("wandb_main")
    logged = []
    with pytest.MonkeyPatch.context() as mp:
        dirs = isolate(mp, root)
        run = wandb.init(
            project="jaxobs-test",
            name="reader-check",
            group="grp-1",
            tags=["alpha", "beta"],
            config=CONFIG,
        )
        try:
            run_id = run.id
            run.define_metric("trainer/step")
            run.define_metric("*", step_metric="trainer/step")
            run.define_metric("val/acc", summary="max")
            for i in range(N_TRAIN):
                row = _train_row(i)
                run.log(row)
                logged.append(_expected_flat(row))
                if i % 50 == 49:  # an eval row, logged separately, as bridges do
                    run.log(_val_row(i))
                    logged.append(_flatten(_val_row(i)))
            run.config.update({"late_key": "set after init"})
            run.summary.update({"best/loss": 0.0125, "done": True})
            log_file = root / "train.log"
            artifact_bytes = b"".join(b"step %d ok\n" % i for i in range(40))
            log_file.write_bytes(artifact_bytes)
            artifact = wandb.Artifact(
                "reader-check-log", type="trainlog", metadata={"rows": N_TRAIN, "fmt": "txt"}
            )
            artifact.add_file(str(log_file), name="logs/train.log")
            run.log_artifact(artifact)
            notes = root / "notes.txt"
            notes.write_text("saved file\n")
            run.save(str(notes), base_path=str(root), policy="end")
            run.alert(title="loss spike", text="NaN at step 5", level=wandb.AlertLevel.WARN)
            run.finish()
        finally:
            wandb.teardown()
        return MainRun(root, dirs, run_id, logged, artifact_bytes, read_offline_run(root))


# --- the main run, read back ---------------------------------------------------------------------


def test_file_layout_framing_and_crc(main_run: MainRun) -> None:
    (run_dir,) = find_offline_runs(main_run.root)
    assert run_dir.parent == main_run.dirs["WANDB_DIR"] / "wandb"
    assert run_dir.name.startswith("offline-run-") and run_dir.name.endswith(main_run.run_id)
    file = run_dir / f"run-{main_run.run_id}.wandb"
    assert wandb_file(main_run.root) == wandb_file(run_dir) == wandb_file(file) == file
    data = file.read_bytes()
    assert data[:7] == b":W&B" + struct.pack("<HB", 0xBEE1, 0)
    variant: list[str] = []
    chunks = list(iter_chunks(data, crc_variant=variant))
    assert variant == ["ieee-seeded"]  # zlib.crc32(data, crc32(type byte)), not masked
    for chunk in chunks:
        crc = struct.unpack_from("<I", data, chunk.offset)[0]
        assert crc == zlib.crc32(chunk.data, zlib.crc32(bytes([chunk.type])))
    records = read_records(file)
    assert records[0].header.version_info.producer.startswith("0.31.0+")
    assert records[-1].WhichOneof("record_type") == "exit"
    assert main_run.run.wandb_version.startswith("0.31.0")


def test_run_identity(main_run: MainRun) -> None:
    run = main_run.run
    assert run.run_id == main_run.run_id
    assert (run.project, run.name, run.group) == ("jaxobs-test", "reader-check", "grp-1")
    assert run.tags == ["alpha", "beta"]
    assert run.sweep_id == ""
    assert run.exit_code == 0
    assert run.start_time > 1.7e9
    assert run.telemetry["cli_version"] == "0.31.0"
    assert run.telemetry["feature"]["offline"] is True


def test_config(main_run: MainRun) -> None:
    want = {**CONFIG, "late_key": "set after init"}
    _assert_same(main_run.run.config, want, "config")


def test_history_rows_match_what_was_logged(main_run: MainRun) -> None:
    history = main_run.run.history
    assert len(history) == len(main_run.logged)
    for step, (got, want) in enumerate(zip(history, main_run.logged, strict=True)):
        assert got["_step"] == step  # one row per log() call, counted from 0
        assert isinstance(got["_runtime"], (int, float))
        extra = set(got) - set(want)
        assert extra == {"_step", "_runtime"}, step
        for key, value in want.items():
            _assert_same(got[key], value, f"row {step} {key}")
    # The special values really are special, not strings.
    assert math.isnan(history[5]["train/loss"])
    assert history[7]["train/grad_norm"] == math.inf
    assert history[8]["train/grad_norm"] == -math.inf
    assert history[10]["big_int"] == 2**53 + 1  # integers survive exactly
    assert history[10]["opt/mom/beta"] == 0.9  # nested dicts: "/"-joined keys


def test_histogram_is_stored_as_nested_keys(main_run: MainRun) -> None:
    (row,) = [r for r in main_run.run.history if "weights/_type" in r]
    assert subkeys(row, "weights") == {
        "_type": "histogram",
        "bins": HIST_EDGES.tolist(),  # the edges, as given (len(counts) + 1)
        "values": HIST_COUNTS.tolist(),
    }


def test_summary(main_run: MainRun) -> None:
    want: dict[str, Any] = {}
    for row in main_run.logged:
        want.update(row)
    val_accs = [row["val/acc"] for row in main_run.logged if "val/acc" in row]
    want["val/acc"] = {"max": max(val_accs)}  # define_metric(summary="max") replaces "last"
    want["_step"] = len(main_run.logged) - 1
    want["best/loss"] = 0.0125
    want["done"] = True
    got = dict(main_run.run.summary)
    assert isinstance(got.pop("_runtime"), (int, float))
    assert not any(k.startswith("_wandb") for k in got)
    _assert_same(got, want, "summary")


def test_metric_definitions(main_run: MainRun) -> None:
    got = main_run.run.metric_definitions
    picked = [
        {k: m[k] for k in ("name", "glob_name", "step_metric", "summary", "step_sync")} for m in got
    ]
    assert picked == [
        {
            "name": "trainer/step",
            "glob_name": None,
            "step_metric": None,
            "summary": [],
            "step_sync": False,
        },
        {
            "name": None,
            "glob_name": "*",
            "step_metric": "trainer/step",
            "summary": [],
            "step_sync": True,
        },
        {
            "name": "val/acc",
            "glob_name": None,
            "step_metric": None,
            "summary": ["max"],
            "step_sync": False,
        },
    ]
    assert all(m["defined"] and m["goal"] is None for m in got)


def test_history_column_uses_the_step_metric(main_run: MainRun) -> None:
    want = [(r["trainer/step"], r["val/acc"]) for r in main_run.logged if "val/acc" in r]
    assert history_column(main_run.run, "val/acc") == want
    loss = history_column(main_run.run, "train/loss")
    assert len(loss) == N_TRAIN and loss[0] == (0, main_run.logged[0]["train/loss"])
    steps = history_column(main_run.run, "trainer/step")  # a step metric is plotted on _step
    assert steps[:2] == [(0, 0), (1, 1)]


def test_artifact_and_its_staged_copy(main_run: MainRun) -> None:
    (art,) = main_run.run.artifacts
    assert (art["name"], art["type"]) == ("reader-check-log", "trainlog")
    assert art["metadata"] == {"rows": N_TRAIN, "fmt": "txt"}
    assert art["aliases"] == ["latest"]
    assert art["paths"] == ["logs/train.log"]
    (entry,) = art["entries"]
    content = main_run.artifact_bytes
    assert entry["size"] == len(content)
    assert entry["digest"] == base64.b64encode(hashlib.md5(content).digest()).decode()
    staged = Path(entry["local_path"])
    assert staged.parent == main_run.dirs["WANDB_DATA_DIR"] / "artifacts" / "staging"
    assert staged.read_bytes() == content


def test_alert_and_files(main_run: MainRun) -> None:
    assert main_run.run.alerts == [
        {"title": "loss spike", "text": "NaN at step 5", "level": "WARN", "wait": 60000}
    ]
    assert {"path": "notes.txt", "policy": "end", "type": "other"} in main_run.run.files


def test_wait_for_exit_and_timeout_on_a_complete_run(main_run: MainRun) -> None:
    records = wait_for_exit(main_run.root, timeout=1.0)
    assert records[-1].WhichOneof("record_type") == "exit"
    assert read_offline_run(main_run.root, timeout=1.0).history == main_run.run.history


def test_find_offline_runs(main_run: MainRun, tmp_path: Path) -> None:
    src = wandb_file(main_run.root)
    for name in ("offline-run-20260102_000000-bbb", "offline-run-20260101_000000-aaa"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
        shutil.copy(src, tmp_path / "wandb" / name / f"run-{name[-3:]}.wandb")
    (tmp_path / "wandb" / "run-20260103_000000-ccc").mkdir()  # an online run: not offline
    shutil.copy(src, tmp_path / "wandb" / "run-20260103_000000-ccc" / "run-ccc.wandb")
    (tmp_path / "wandb" / "offline-run-20260104_000000-ddd").mkdir()  # no .wandb file yet
    (tmp_path / "wandb" / "latest-run").symlink_to(tmp_path / "wandb" / name)
    assert find_offline_runs(tmp_path) == [
        tmp_path / "wandb" / "offline-run-20260101_000000-aaa",
        tmp_path / "wandb" / "offline-run-20260102_000000-bbb",
    ]
    with pytest.raises(FileNotFoundError, match="expected one offline run"):
        wandb_file(tmp_path)


# --- many rows: records cross 32 KiB blocks -------------------------------------------------------


def test_many_rows_cross_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    n = 2500
    big = "x" * (3 * BLOCK_SIZE)  # one record longer than two blocks: FIRST, MIDDLE..., LAST
    run = wandb.init(project="many", config={"big": big})
    try:
        run.define_metric("*", step_metric="trainer/step")
        for i in range(n):
            run.log({"trainer/step": i, "loss": 1.0 / (i + 1), "tag": f"r{i}"})
        run.finish()
    finally:
        wandb.teardown()
    file = wandb_file(tmp_path)
    data = file.read_bytes()
    assert len(data) > 8 * BLOCK_SIZE
    types = Counter(c.type for c in iter_chunks(data))
    assert types[FULL] > n and types[MIDDLE] >= 2 and types[FIRST] == types[LAST] > 5
    got = read_offline_run(file)
    assert got.config == {"big": big}
    assert len(got.history) == n
    for i, row in enumerate(got.history):
        want = {"trainer/step": i, "loss": 1.0 / (i + 1), "tag": f"r{i}", "_step": i}
        assert {k: row[k] for k in want} == want
    assert got.exit_code == 0


# --- sweeps: what the agent sets up, offline -----------------------------------------------------


# wandb 0.31.0 leaves the sweep parameter file open (wandb_setup.py, dict_from_config_file).
@pytest.mark.filterwarnings(
    r"ignore:unclosed file <_io\.TextIOWrapper name=.*\.yaml'.*:ResourceWarning"
)
def test_sweep_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    params = tmp_path / "config-sweeprun1.yaml"
    params.write_text("lr:\n  value: 0.01\n")  # the agent's {key: {"value": v}} layout
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw33pid")
    monkeypatch.setenv("WANDB_RUN_ID", "sweeprun1")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    monkeypatch.setenv("WANDB_PROJECT", "sweepy")
    # In a sweep, wandb ignores init's project (and entity, id); the environment sets them.
    run = wandb.init(project="ignored", config={"lr": 0.1, "bs": 32})
    try:
        assert run.config["lr"] == 0.01
        run.log({"loss": 0.5})
        run.finish(exit_code=3)
    finally:
        wandb.teardown()
    got = read_offline_run(tmp_path)
    assert (got.run_id, got.sweep_id, got.project) == ("sweeprun1", "sw33pid", "sweepy")
    assert got.config == {"lr": 0.01, "bs": 32}  # plain values, sweep value wins
    assert got.exit_code == 3


# --- broken and unfinished files ----------------------------------------------------------------


def _ieee(kind: int, piece: bytes) -> int:
    return zlib.crc32(piece, zlib.crc32(bytes([kind])))


def _frame(payloads: list[bytes], crc_of: Callable[[int, bytes], int] = _ieee) -> bytes:
    """An independent writer of the framing, to build files the reader must accept or reject."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for payload in payloads:
        rest, first = payload, True
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < 7:
                out += b"\0" * left
                continue
            piece, rest = rest[: left - 7], rest[left - 7 :]
            kind = (FULL if first else LAST) if not rest else (FIRST if first else MIDDLE)
            crc = crc_of(kind, piece)
            out += struct.pack("<IHB", crc, len(piece), kind) + piece
            first = False
            if not rest:
                break
    return bytes(out)


@pytest.fixture
def real_bytes(main_run: MainRun) -> bytes:
    return wandb_file(main_run.root).read_bytes()


@pytest.mark.parametrize(
    ("offset", "replacement"),
    [(0, b":W&C"), (4, struct.pack("<H", 0xBEE2)), (6, b"\x01")],
    ids=["magic", "ident", "version"],
)
def test_bad_file_header_raises(
    real_bytes: bytes, tmp_path: Path, offset: int, replacement: bytes
) -> None:
    bad = bytearray(real_bytes)
    bad[offset : offset + len(replacement)] = replacement
    (tmp_path / "run-x.wandb").write_bytes(bad)
    with pytest.raises(WandbFormatError, match="not a W&B run file"):
        read_records(tmp_path / "run-x.wandb")
    with pytest.raises(WandbFormatError, match="not a W&B run file"):
        wait_for_exit(tmp_path, timeout=5.0)  # a wrong header is not waited on


def test_corrupt_chunk_raises(real_bytes: bytes, tmp_path: Path) -> None:
    chunk = list(iter_chunks(real_bytes))[10]
    bad = bytearray(real_bytes)
    bad[chunk.offset + 7 + len(chunk.data) // 2] ^= 0x40
    (tmp_path / "run-x.wandb").write_bytes(bad)
    with pytest.raises(WandbFormatError, match="CRC mismatch"):
        read_records(tmp_path)


def test_truncated_file(real_bytes: bytes, main_run: MainRun, tmp_path: Path) -> None:
    full = read_records(main_run.root)
    file = tmp_path / "run-x.wandb"
    file.write_bytes(real_bytes[: len(real_bytes) - 5])
    with pytest.raises(WandbFormatError, match="truncated"):
        read_records(file)
    partial = read_records(file, allow_partial=True)
    assert partial == full[: len(partial)] and len(partial) == len(full) - 1
    with pytest.raises(TimeoutError, match="no exit record"):
        wait_for_exit(file, timeout=0.2)


def test_header_only_file_is_the_finish_race(real_bytes: bytes, tmp_path: Path) -> None:
    file = tmp_path / "run-x.wandb"
    file.write_bytes(real_bytes[:7])
    assert read_records(file) == []
    with pytest.raises(WandbFormatError, match=r"teardown|no records"):
        read_offline_run(file)
    with pytest.raises(TimeoutError):
        read_offline_run(file, timeout=0.2)
    file.write_bytes(real_bytes[:3])  # not even the whole header yet
    assert read_records(file, allow_partial=True) == []
    with pytest.raises(WandbFormatError, match="too short"):
        read_records(file)


def test_reframed_records_read_back_the_same(main_run: MainRun, tmp_path: Path) -> None:
    records = read_records(main_run.root)
    huge = type(records[0])()
    huge.config.update.add(key="huge", value_json='"' + "y" * (2 * BLOCK_SIZE + 100) + '"')
    records.insert(3, huge)
    file = tmp_path / "run-x.wandb"
    file.write_bytes(_frame([r.SerializeToString() for r in records]))
    assert read_records(file) == records
    assert read_offline_run(file).config["huge"] == "y" * (2 * BLOCK_SIZE + 100)


def test_other_wandb_version_in_file_raises(main_run: MainRun, tmp_path: Path) -> None:
    records = read_records(main_run.root)
    records[0].header.version_info.producer = "0.32.0+abc"
    file = tmp_path / "run-x.wandb"
    file.write_bytes(_frame([r.SerializeToString() for r in records]))
    with pytest.raises(WandbFormatError, match=r"0\.32\.0"):
        read_records(file)


def test_other_installed_wandb_raises(main_run: MainRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wandb, "__version__", "0.32.0")
    with pytest.raises(WandbFormatError, match=r"wandb 0\.32\.0 is installed"):
        read_records(main_run.root)


def test_masked_crc_variants_are_read_but_not_mixed(main_run: MainRun, tmp_path: Path) -> None:
    records = read_records(main_run.root)
    payloads = [r.SerializeToString() for r in records]
    file = tmp_path / "run-x.wandb"
    for name, crc_of in CRC_VARIANTS.items():
        file.write_bytes(_frame(payloads, crc_of))
        found: list[str] = []
        assert len(list(iter_chunks(file.read_bytes(), crc_variant=found))) >= len(records)
        assert found == [name]
        assert read_records(file) == records
    calls = []

    def mixed(kind: int, piece: bytes) -> int:  # the second chunk switches to another variant
        calls.append(kind)
        return (_ieee if len(calls) == 1 else CRC_VARIANTS["ieee-seeded-masked"])(kind, piece)

    file.write_bytes(_frame(payloads, mixed))
    with pytest.raises(WandbFormatError, match="CRC mismatch"):
        read_records(file)


def test_crc32c_check_value() -> None:
    from wandb_files import _crc32c, _mask

    assert _crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert _mask(0) == 0xA282EAD8
