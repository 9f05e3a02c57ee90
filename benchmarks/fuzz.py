"""The RPC fuzz test (tests/test_fuzz_rpcs.py) at a longer budget than CI's: every RPC, Play streams included,
``--examples`` examples per RPC (CI: 20), derandomised or (``--random``) with a fresh seed.

Prints one JSON object: examples per RPC, the answers by code per RPC, wall seconds, pass / fail, and the CI-size
run of the same file in the same invocation as the baseline (``ci``).

    python benchmarks/fuzz.py [--examples 400] [--random]
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit, log  # noqa: E402


def _run(examples: int, randomize: bool) -> dict:
    env = dict(os.environ, FUZZ_EXAMPLES=str(examples))
    args = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:xdist", "-p", "no:cacheprovider",
            str(ROOT / "tests" / "test_fuzz_rpcs.py")]
    if randomize:
        env["FUZZ_RANDOM"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = re.search(r"^.*fuzz answers: (\{.*\})$", proc.stdout, re.M)
    answers = ast.literal_eval(m.group(1)) if m else {}
    summary = [ln for ln in proc.stdout.splitlines() if " passed" in ln or " failed" in ln]
    return {"examples_per_rpc": examples, "wall_s": round(wall, 1), "ok": proc.returncode == 0,
            "summary": summary[-1] if summary else proc.stdout[-500:],
            "requests": sum(sum(v.values()) for v in answers.values()), "answers": answers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--random", action="store_true", help="not derandomised: a fresh seed each run")
    args = p.parse_args()
    log("CI budget (20 per RPC)")
    ci = _run(20, False)
    log(f"long run ({args.examples} per RPC)")
    long = _run(args.examples, args.random)
    emit({"name": "fuzz", "ci": ci, "long": long, "load": os.getloadavg()})


if __name__ == "__main__":
    main()
