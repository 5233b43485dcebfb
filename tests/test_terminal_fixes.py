"""User strings on the terminal are text, and the active run after a nested run finishes."""

import io

from rich.console import Console

import jaxobs
from jaxobs.cli import main

NAME = "[/]\x1b]0;title\a"
METRIC = "a[/]b"
CONFIG_KEY = "[red]k[/red]"


def test_show_prints_user_strings_literally(tmp_path, capsys):
    """Markup in names and keys is printed as written; control characters do not pass."""
    with jaxobs.init(
        project="proj", name=NAME, dir=tmp_path, terminal=False, config={CONFIG_KEY: 1}
    ) as run:
        run.log({METRIC: 1.0}, step=0)
    assert main(["show", str(run.dir), "--all"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\a" not in out
    assert METRIC in out and CONFIG_KEY in out
    assert "[/]\\x1b]0;title\\x07" in out


def test_terminal_sink_prints_user_strings_literally(tmp_path):
    """The live sink keeps working and shows markup and control characters as text."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system=None, width=200)
    sink = jaxobs.TerminalSink(keys=[METRIC, "x\\"], console=console)
    project = "[red]p\x1b]0;title\a"  # no slash: a project is a folder name
    with jaxobs.init(project=project, name="n", dir=tmp_path, terminal=False, sinks=[sink]) as run:
        run.log({METRIC: 1.0, "x\\": 2.0}, step=0)
    out = buffer.getvalue()  # the live display moves the cursor with ESC [, nothing else
    assert "\x1b]" not in out and "\a" not in out
    assert "[red]p\\x1b]0;title\\x07/" in out
    assert f"{METRIC}=1" in out and "x\\=2" in out
    assert "run finished" in out  # the sink was not disabled by the markup


def test_active_run_returns_to_the_outer_run(tmp_path):
    """When an inner run finishes while an outer one is open, the outer one is active again."""
    outer = jaxobs.init(project="proj", name="outer", dir=tmp_path, terminal=False)
    with jaxobs.init(project="proj", name="inner", dir=tmp_path, terminal=False) as inner:
        assert jaxobs.active_run() is inner
    assert jaxobs.active_run() is outer
    outer.finish()
    assert jaxobs.active_run() is None
