"""`make bench`: run every benchmark script and print one table.

Each script prints `RESULT {json}` lines (see bench/common.py); a script that fails is
shown as failed, and the others still run. Benchmarks, not tests: nothing here fails CI.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["gallery_pages.py", "concurrency.py", "cold_start.py", "generation_overhead.py"]


def main() -> int:
    rows = []
    for script in SCRIPTS:
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(HERE / script)], cwd=HERE, capture_output=True, text=True)
        results = [json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not results:
            rows.append({"name": f"{script} FAILED", "ours": done.stderr.strip().splitlines()[-1:] or "", "baseline": "",
                         "ratio": None, "bound": None, "note": ""})
        rows.extend(results)
        print(f"  {script}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(table(rows))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| figure | ours | baseline | ratio | bound | |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        bound = "" if row["bound"] is None else f"<= {row['bound']}x"
        verdict = "" if row["bound"] is None or row["ratio"] is None else (
            "within" if row["ratio"] <= row["bound"] else "OVER")
        lines.append(f"| {row['name']} | {row['ours']} | {row['baseline']} | {ratio} | {bound} | {verdict} |")
        if row.get("note"):
            lines.append(f"| | {row['note']} | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
