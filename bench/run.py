"""`make bench`: run every bench/bench_*.py in turn, then print one table of all their figures
(each next to the raw baseline it measured in the same run) and write bench/results.json.

Usage: python bench/run.py [NAME ...]   (NAME filters by file name, e.g. `intake`)
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib import format_table


def main(argv: list[str]) -> int:
    files = sorted(HERE.glob("bench_*.py"))
    if argv:
        files = [f for f in files if any(name in f.stem for name in argv)]
    results = Path(tempfile.mkstemp(prefix="bench-", suffix=".jsonl")[1])
    env = {**os.environ, "BENCH_RESULTS_FILE": str(results),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    failed = []
    runs = []
    for f in files:
        print(f"\n== {f.name}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(f)], env=env)
        runs.append({"bench": f.name, "exit_code": code,
                     "seconds": round(time.monotonic() - started, 1)})
        if code != 0:
            failed.append(f.name)
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    results.unlink()
    print("\n## All figures (medians/percentiles; ratios against baselines measured in this run)\n")
    print(format_table(rows))
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "platform": platform.platform()},
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "runs": runs, "results": rows}
    (HERE / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwritten: {HERE / 'results.json'}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
