"""builder.run, the funnel of hcbuild's external commands, with real commands (sh, cat, sleep)."""

from __future__ import annotations

import io
import os
import shlex
import signal
from pathlib import Path

import pytest

from builder.errors import BuildError, CommandError
from builder.progress import Progress
from builder.run import exit_words, run, run_bytes, run_pipeline, spawn

NOISY = "for i in $(seq 40); do echo line$i >&2; done; exit 3"


def test_output_env_cwd_and_input(tmp_path: Path) -> None:
    r = run(["sh", "-c", 'echo "$HC_X"; pwd; cat'], what="probe", input="from stdin\n",
            env={**os.environ, "HC_X": "y z"}, cwd=tmp_path)
    assert r.ok and r.returncode == 0
    assert r.stdout == f"y z\n{tmp_path}\nfrom stdin\n"


def test_failure_names_command_exit_code_and_output_tail() -> None:
    cmd = ["sh", "-c", NOISY]
    with pytest.raises(CommandError) as ei:
        run(cmd, what="make noise")
    e = ei.value
    assert isinstance(e, BuildError) and e.exit_code == 4
    assert e.cmd == cmd and e.returncode == 3
    assert str(e) == f"make noise: exit code 3: {shlex.join(cmd)}"
    assert e.tail == [f"line{i}" for i in range(11, 41)]  # the last 30 lines


def test_unchecked_failure_is_a_result() -> None:
    r = run(["sh", "-c", "echo out; echo err >&2; exit 2"], what="x", check=False)
    assert (r.ok, r.returncode, r.stdout, r.stderr) == (False, 2, "out\n", "err\n")
    assert r.error().tail == ["out", "err"]
    assert "x: exit code 2" in str(r.error())


def test_not_found_is_127_in_words(tmp_path: Path) -> None:
    with pytest.raises(CommandError) as ei:
        run(["hc-no-such-command", "--flag"], what="try")
    assert ei.value.returncode == 127
    assert str(ei.value) == "try: exit code 127: hc-no-such-command not found: " \
                            "hc-no-such-command --flag"
    r = run(["hc-no-such-command"], what="try", check=False)
    assert r.returncode == 127 and not r.ok and "hc-no-such-command not found" in r.stderr
    with pytest.raises(CommandError, match=f"cannot start in {tmp_path / 'gone'}") as ei:
        run(["true"], what="try", cwd=tmp_path / "gone")
    assert ei.value.returncode == 126


def test_exit_words() -> None:
    assert exit_words(1, ["x"]) == "exit code 1"
    assert exit_words(126, ["x"]) == "exit code 126: x cannot be executed"
    assert exit_words(-signal.SIGKILL, ["x"]) == "killed by SIGKILL"


def test_timeout_kills_and_says_so() -> None:
    with pytest.raises(CommandError, match=r"t: timed out after 0\.3 s: sh -c") as ei:
        run(["sh", "-c", "echo started >&2; exec sleep 30"], what="t", timeout=0.3)
    assert ei.value.returncode == -signal.SIGKILL
    assert ei.value.tail == ["started"]


def test_tick_runs_while_the_command_runs(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    calls: list[int] = []

    def tick() -> None:
        calls.append(1)
        flag.touch()

    # the command ends only once the tick has run: no clock in the test
    r = run(["sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.02; done; echo done"],
            what="wait", tick=(0.05, tick), merge_stderr=True)
    assert r.stdout == "done\n" and calls


def test_binary_in_and_out() -> None:
    data = bytes(range(256)) * 10
    assert run_bytes(["cat"], what="copy", input=data).stdout == data
    with pytest.raises(CommandError) as ei:
        run_bytes(["sh", "-c", "echo bad input >&2; exit 1"], what="decode", input=b"\0")
    assert ei.value.tail == ["bad input"]


def test_step_line() -> None:
    out = io.StringIO()
    prog = Progress(stream=out)
    run(["true"], what="t", progress=prog, step="nothing much")
    with pytest.raises(CommandError):
        run(["false"], what="t", progress=prog, step="fails")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("s] nothing much") and lines[1].endswith("s] fails FAILED")


def test_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with open(out, "wb") as f:
        run_pipeline([["printf", "b\\na\\n"], ["sort"], ["tr", "a-z", "A-Z"]], what="p",
                     stdout=f)
    assert out.read_text() == "A\nB\n"


def test_pipeline_names_the_failing_command(tmp_path: Path) -> None:
    failing = ["sh", "-c", "echo it broke >&2; exit 4"]
    with open(tmp_path / "out", "wb") as f, pytest.raises(CommandError) as ei:
        run_pipeline([["printf", "x\\n"], failing, ["cat"]], what="pack", stdout=f)
    e = ei.value
    assert (e.cmd, e.returncode, e.tail) == (failing, 4, ["it broke"])
    assert str(e).startswith("pack (printf | sh | cat): exit code 4: sh -c")
    # `yes` dies of SIGPIPE once its reader has failed: the reader is named
    reader = ["sh", "-c", "read x; exit 2"]
    with open(tmp_path / "out", "wb") as f, pytest.raises(CommandError) as ei:
        run_pipeline([["yes"], reader], what="pack", stdout=f)
    assert ei.value.cmd == reader and ei.value.returncode == 2
    with open(tmp_path / "out", "wb") as f, pytest.raises(CommandError) as ei:
        run_pipeline([["printf", "x"], ["hc-no-such-command"]], what="pack", stdout=f)
    assert ei.value.returncode == 127


def test_spawn_and_stop() -> None:
    p = spawn(["sleep", "30"], what="sleeper")
    assert p.poll() is None and p.pid > 0
    assert p.stop(grace=10) == -signal.SIGTERM
    assert p.stop() == -signal.SIGTERM  # already ended: nothing more to do
    e = p.error()
    assert str(e) == "sleeper: killed by SIGTERM: sleep 30"


def test_builder_runs_commands_only_through_the_funnel() -> None:
    import builder

    pkg = Path(builder.__file__).resolve().parent
    spawners = ("subprocess", "os.system", "os.popen", "os.exec", "os.spawn", "pty.spawn")
    offenders = [f"{p.relative_to(pkg)}:{n}: {line.strip()}"
                 for p in sorted(pkg.rglob("*.py")) if p.name != "run.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if any(s in line for s in spawners)]
    assert offenders == []
