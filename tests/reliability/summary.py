"""Print the reliability table from the rows the suite recorded: python -m tests.reliability.summary

Each load test appends one row to test-artifacts/reliability/results.jsonl (`make test-reliability`
clears it first). The table is Markdown, ready for docs/reliability.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

from tests.reliability.load import RESULTS

COLUMNS = (
    "scenario",
    "sent",
    "answered correctly",
    "wrong",
    "refused (by code)",
    "lost",
    "5xx",
    "refusal p50 / p99",
    "max RSS",
    "notes",
)


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")] if cpuinfo.exists() else []
    )
    model = names[0].split(":", 1)[1].strip() if names else "unknown CPU"
    cores = len(os.sched_getaffinity(0))
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{cores} cores ({model}), {system}; load average at the end {load}"


def row(entry: dict) -> list[str]:
    refused = ", ".join(f"{code}: {n}" for code, n in sorted(entry["refused"].items())) or "0"
    other = ", ".join(f"{code}: {n}" for code, n in sorted(entry["other"].items()))
    notes = "; ".join(filter(None, [entry.get("notes", ""), f"other answers {other}" if other else ""]))
    return [
        entry["scenario"],
        str(entry["sent"]),
        str(entry["correct"]),
        str(entry["wrong"]),
        refused,
        str(entry["lost"]),
        str(entry["server_errors"]),
        f"{entry.get('refusal_p50_ms', 0):.1f} / {entry['refusal_p99_ms']:.1f} ms" if entry["refusal_p99_ms"] else "—",
        f"{entry['max_rss_mb']:.0f} MB" if entry["max_rss_mb"] else "—",
        notes,
    ]


def main() -> int:
    if not RESULTS.exists():
        print(f"no results in {RESULTS}: run `make test-reliability`", file=sys.stderr)
        return 1
    entries = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    today = datetime.date.today().isoformat()
    print(f"\nReliability summary — {machine()}; {today}; `make test-reliability`\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for entry in entries:
        print("| " + " | ".join(row(entry)) + " |")
    lost = sum(e["lost"] for e in entries)
    wrong = sum(e["wrong"] for e in entries)
    errors = sum(e["server_errors"] for e in entries)
    print(f"\nTotal: {sum(e['sent'] for e in entries)} sent, {lost} lost, {wrong} wrong, {errors} 5xx.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
