"""The progressive record of a gpu-check run: one JSON line per finished phase, appended to
$OUT/results.jsonl as soon as the phase ends, so a run cut short still leaves what it measured.

    python -m gpu_check.results --file F --phase NAME --status ok|failed|timeout|skipped \
        --rc N --seconds S --limit L [--result JSON_FILE] [--memory JSON_FILE] [--note TEXT]

A line: {"phase", "status", "rc", "seconds", "limit_s", "result": the phase's own JSON (our
binary's or a gpu_check module's output file) or null, "memory": gpu_memory's JSON or null,
"note"}. Standard library only.
"""

import argparse
import json
import os


def read_json(path):
    """The JSON object in a file (the last line that parses, for tools that print more), or None."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError:
        for line in reversed(text.splitlines()):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def load(path):
    """phase name -> its last record."""
    phases = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    phases[rec["phase"]] = rec
                except (ValueError, KeyError, TypeError):
                    pass
    return phases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    ap.add_argument("--phase", required=True)
    ap.add_argument("--status", required=True)
    ap.add_argument("--rc", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--result")
    ap.add_argument("--memory")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    rec = {"phase": a.phase, "status": a.status, "rc": a.rc, "seconds": a.seconds, "limit_s": a.limit,
           "result": read_json(a.result), "memory": read_json(a.memory), "note": a.note}
    with open(a.file, "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
