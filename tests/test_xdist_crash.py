"""A pytest-xdist worker lost under ``--dist loadfile`` (``make test``'s distribution): the test it died in fails and
the run goes on to its end (tests/xdist_crash.py). pytest-xdist 3.8 on its own hands the finished files of the lost
worker out again as empty work units, and a run whose worker dies near its end waits for good (CI, sessions 17 and
28). A suite of five files whose worker processes exit in two of its tests, run in a subprocess with the plugin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist")

TOY = '''
import os
import time


def _maybe_die(n):
    """The worker process exits here (no report, no teardown) the first time, when CRASH names this test."""
    key = os.path.basename(__file__)[len("test_")] + str(n)
    marker = os.path.join(os.environ["CRASH_DIR"], key)
    if key in os.environ["CRASH"].split(",") and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    time.sleep(1.0 if "e" in key else 0.2)  # the last file the slowest: the other worker is told to stop first


def test_1():
    _maybe_die(1)


def test_2():
    _maybe_die(2)


def test_3():
    _maybe_die(3)


def test_4():
    _maybe_die(4)
'''


def test_a_lost_worker_fails_its_test_and_the_run_ends(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in "abcde":
        (suite / f"test_{name}.py").write_text(TOY)
    (suite / "conftest.py").write_text("from xdist_crash import pytest_xdist_make_scheduler  # noqa: F401\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not this run's xdist worker
    # b2: a worker dies early, with files left in the queue; e3: one dies at the end of the run, once the other
    # worker has been told to stop (where xdist 3.8 alone hung), with e4 still to run
    env.update(PYTHONPATH=str(Path(__file__).parent), CRASH="b2,e3", CRASH_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rf", "-n", "2", "--dist", "loadfile",
         "--basetemp", str(tmp_path / "tmp"), str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.glob("[be][0-9]")) == ["b2", "e3"], out[-3000:]  # both workers died
    assert done.returncode == 1, out[-3000:]
    assert re.search(r"\b2 failed, 18 passed\b", out), out[-3000:]  # every other test ran, once
    failed = sorted(re.findall(r"^FAILED (\S+)", out, re.M))
    assert failed == ["test_b.py::test_2", "test_e.py::test_3"], out[-3000:]
