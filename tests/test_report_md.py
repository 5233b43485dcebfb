"""`jaxobs report`: the Markdown report of a run and the PNG plots beside it."""

import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import jaxobs
from jaxobs._src.analysis.report_md import MIN_PLOT_POINTS, md_escape, thin
from jaxobs.cli import main

JAXOBS = str(pathlib.Path(sys.executable).parent / "jaxobs")
NAME = "<script>alert(1)</script>"
STEPS = 30


@pytest.fixture
def nan_run(tmp_path):
    """A 30-step run with losses, accuracies, two layers' grad norms, a summary, then a NaN."""
    rng = np.random.default_rng(1)
    loss = rng.uniform(0.2, 3.0, size=STEPS).tolist()
    acc = rng.uniform(0.1, 0.9, size=STEPS).tolist()
    with jaxobs.init(
        project="proj",
        name=NAME,
        dir=tmp_path,
        terminal=False,
        health=jaxobs.HealthChecker(),
        config={"lr": 0.05, "opt": {"name": "sgd"}},
        tags=["t1"],
    ) as run:
        for step in range(STEPS):
            run.log(
                {
                    "train/loss": loss[step],
                    "val/accuracy": acc[step],
                    "grads/Dense_0/kernel/norm": 1.0 + step,
                    "grads/Dense_1/kernel/norm": 0.5,
                },
                step=step,
            )
        run.summary["best"] = 1.0
        run.log({"train/loss": math.nan}, step=STEPS)
    return run.dir, loss, acc


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows of a Markdown text by their first cell."""
    out = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            out[cells[0]] = cells[1:]
    return out


def _images(report: pathlib.Path) -> list[pathlib.Path]:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text(encoding="utf-8"))
    return [report.parent / link for link in links]


def test_report_of_a_run_has_its_tables_alert_and_images(nan_run, capsys):
    """The report holds the logged last/best values, the config, summary, alert and images."""
    import matplotlib.image

    run_dir, loss, acc = nan_run
    assert main(["report", str(run_dir)]) == 0
    report = run_dir / "report.md"
    assert capsys.readouterr().out.strip() == str(report)
    text = report.read_text(encoding="utf-8")
    rows = _rows(text)
    assert rows["val/accuracy"][:2] == [f"{acc[-1]:.4g}", str(STEPS - 1)]
    best = int(np.argmax(acc))
    assert rows["val/accuracy"][2:4] == [f"{max(acc):.4g} (max)", str(best)]
    assert rows["train/loss"][:2] == ["nan", str(STEPS)]
    assert rows["train/loss"][2:4] == [f"{min(loss):.4g} (min)", str(int(np.argmin(loss)))]
    assert rows["train/loss"][-1] == "1"  # one non-finite value
    assert rows["lr"] == ["0.05"] and rows["opt.name"] == ["sgd"]
    assert rows["best"] == ["1.0"]
    assert rows["**status**"] == ["finished"] and rows["**tags**"] == ["t1"]
    assert rows["**steps**"] == [f"{STEPS + 1} (last step {STEPS})"]
    assert rows[str(STEPS)][:2] == ["critical", "nonfinite"]  # the alert, by its step
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    images = _images(report)
    names = sorted(p.name for p in images)
    assert names == ["00-train.png", "01-val.png", f"crash-{STEPS}.png", "grad-norms.png"]
    for png in images:
        pixels = matplotlib.image.imread(png)
        assert pixels.ndim == 3 and pixels.shape[0] >= 200 and pixels.shape[1] >= 400, png


def test_output_elsewhere_links_the_crash_image_relatively(nan_run, tmp_path):
    """With -o, the plots go beside the report and every link resolves from it."""
    run_dir, _, _ = nan_run
    out = tmp_path / "out dir" / "r.md"
    assert main(["report", str(run_dir), "-o", str(out)]) == 0
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", out.read_text(encoding="utf-8"))
    from urllib.parse import unquote

    paths = [(out.parent / unquote(link)).resolve() for link in links]
    assert all(p.is_file() for p in paths), links
    assert (out.parent / "r_files" / "00-train.png").is_file()
    assert (run_dir / "crash" / f"crash-{STEPS}.png").resolve() in paths


def test_report_of_a_trainlog_file(nan_run, tmp_path):
    """A TrainLog JSON file gets a report beside it, without status or alerts."""
    run_dir, _, acc = nan_run
    assert main(["report", str(run_dir / "trainlog.json")]) == 0
    rows = _rows((run_dir / "report.md").read_text(encoding="utf-8"))
    assert rows["val/accuracy"][0] == f"{acc[-1]:.4g}"
    assert "**status**" not in rows


def test_md_escape_renders_markup_as_text():
    """Markup characters are escaped, HTML becomes entities, lines are joined."""
    assert md_escape("*x*") == r"\*x\*"
    assert md_escape("a_b|c") == r"a\_b\|c"
    assert md_escape("[l](u)") == r"\[l\](u)"
    assert md_escape("# h `c` \\") == r"\# h \`c\` \\"
    assert md_escape("<b>&</b>") == "&lt;b&gt;&amp;&lt;/b&gt;"
    assert md_escape("a\nb\r\nc\x1b") == r"a b c\\x1b"  # renders as \x1b
    assert md_escape(0.5) == "0.5"


def test_thin_keeps_enough_points_and_the_last():
    """A long curve is thinned to every k-th point, at least MIN_PLOT_POINTS, last kept."""
    n = 5 * MIN_PLOT_POINTS + 3
    steps = list(range(n))
    got, values = thin(steps, [float(s) for s in steps])
    assert len(got) >= MIN_PLOT_POINTS and got[-1] == n - 1
    assert got[:3] == [0, 5, 10] and values == [float(s) for s in got]
    short = list(range(MIN_PLOT_POINTS * 2 - 1))
    assert thin(short, short)[0] == short  # not thinned


def test_long_run_keeps_every_value_in_the_file(tmp_path):
    """The report's tables come from every value, even where the plots are thinned."""
    n = 2 * MIN_PLOT_POINTS + 10
    loss = np.linspace(5.0, 1.0, n)
    loss[n // 2 + 1] = 0.01  # a minimum the plot's thinning would skip
    with jaxobs.init(project="p", name="long", dir=tmp_path, terminal=False) as run:
        for step, v in enumerate(loss):
            run.log({"train/loss": float(v)}, step=step)
    assert main(["report", str(run.dir)]) == 0
    rows = _rows((run.dir / "report.md").read_text(encoding="utf-8"))
    assert rows["train/loss"][2:5] == ["0.01 (min)", str(n // 2 + 1), str(n)]


def test_missing_run_and_html_exit_2_with_one_line(tmp_path):
    """A missing run directory, or --format html, is one error line and exit status 2."""
    for argv, fragment in (
        (["report", str(tmp_path / "missing")], "no such file or directory"),
        (["report", str(tmp_path), "--format", "html"], "not yet available"),
    ):
        out = subprocess.run([JAXOBS, *argv], capture_output=True, text=True)
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jaxobs: error: "), out.stderr
        assert fragment in lines[0] and out.stdout == ""
