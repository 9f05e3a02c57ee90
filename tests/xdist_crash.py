"""A pytest plugin (tests/conftest.py imports its hook): ``--dist loadfile`` (``make test``) with a crashed worker
handled without hanging the run.

pytest-xdist 3.8's ``LoadFileScheduling.remove_node`` puts every file the lost worker ever ran back in the queue,
finished ones included. A replacement worker (or one that is left) is then handed a finished file as a work unit
with no tests in it, which never completes: that worker is never given more work nor told to stop, and the whole
run waits for good with every process idle (pytest-xdist issues 784, 1323 and 1378, open for loadfile in 3.8.0).
CI lost a worker twice (sessions 17 and 28) and then hung until it was killed.

Here only files with tests left go back in the queue, and the test the worker died in (xdist reports it failed) is
not run again: a test that ends its process would end the replacement worker too. tests/test_xdist_crash.py runs a
suite whose worker dies, with and without this plugin.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class CrashSafeLoadFileScheduling(LoadFileScheduling):
        def remove_node(self, node):
            workload = self.assigned_work.pop(node)
            left = [(scope, unit) for scope, unit in workload.items() if not all(unit.values())]
            if not left:
                return None
            # the worker runs its files in the order they were given, each in order: the first test not done is
            # the one it died in
            crashitem = next(nodeid for nodeid, done in left[0][1].items() if not done)
            left[0][1][crashitem] = True
            for scope, unit in left:
                if not all(unit.values()):
                    self.workqueue[scope] = unit
            for other in self.assigned_work:
                self._reschedule(other)
            return crashitem

    return CrashSafeLoadFileScheduling(config, log)
