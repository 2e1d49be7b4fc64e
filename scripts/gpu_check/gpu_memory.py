"""Runs one command and measures its peak GPU memory from outside, by polling nvidia-smi, so that
our engine and diffusers are measured the same way (neither reports on itself).

    python -m gpu_check.gpu_memory --json FILE [--poll-ms 100] [--no-poll] -- CMD ARGS...

Every poll-ms: `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`,
summing the rows of the command's process and its descendants (our wrapper execs the binary, so
the PID is the same). Where the PIDs never match (a container with its own PID namespace) but rows
appear, the sum of all rows is used (only the measured process should be on the GPU); where no row
ever appears, `--query-gpu=memory.used` minus its value before the start. The JSON says which
("method"). The command's output passes through; the exit status is the command's.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

SMI = "nvidia-smi"


def smi(query):
    """Rows of one nvidia-smi query (lists of ints; '[N/A]' fields dropped), or None on failure."""
    try:
        out = subprocess.run([SMI, query, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = []
    for line in out.splitlines():
        try:
            rows.append([int(x.strip()) for x in line.split(",")])
        except ValueError:
            pass  # "No running processes found", "[N/A]"
    return rows


def descendants(root):
    """root and every process below it, from /proc."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        out.add(p)
        todo.extend(children.get(p, []))
    return out


class Poller(threading.Thread):
    def __init__(self, pid, interval_s):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.stop = threading.Event()
        self.peak_pid = self.peak_all = self.peak_used = 0
        self.samples = 0
        self.rows_seen = False
        base = smi("--query-gpu=memory.used")
        self.baseline = base[0][0] if base else None

    def run(self):
        pids, pids_at = {self.pid}, 0.0
        while not self.stop.is_set():
            t = time.monotonic()
            if t - pids_at > 1.0:
                pids, pids_at = descendants(self.pid), t
            rows = smi("--query-compute-apps=pid,used_memory")
            if rows:
                self.rows_seen = True
                self.peak_pid = max(self.peak_pid, sum(r[1] for r in rows if len(r) == 2 and r[0] in pids))
                self.peak_all = max(self.peak_all, sum(r[1] for r in rows if len(r) == 2))
            elif not self.rows_seen and self.baseline is not None:
                used = smi("--query-gpu=memory.used")
                if used:
                    self.peak_used = max(self.peak_used, used[0][0] - self.baseline)
            self.samples += 1
            self.stop.wait(max(0.0, self.interval_s - (time.monotonic() - t)))

    def result(self):
        if self.peak_pid:
            return self.peak_pid, "pid"
        if self.peak_all:
            return self.peak_all, "all-processes"
        if self.peak_used:
            return self.peak_used, "device-used-minus-baseline"
        return None, "none"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--no-poll", action="store_true", help="no nvidia-smi (CPU dry run)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    t = time.perf_counter()
    child = subprocess.Popen(cmd)
    poller = None if a.no_poll else Poller(child.pid, a.poll_ms / 1000)
    if poller:
        poller.start()
    killed = []

    def on_term(signum, _frame):  # timeout(1) or the user: stop the command, still write the JSON
        killed.append(signum)
        child.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        rc = child.wait()
    except KeyboardInterrupt:
        child.kill()
        rc = child.wait()
    if poller:
        poller.stop.set()
        poller.join(6)
    peak, method = poller.result() if poller else (None, "none")
    res = {"cmd": cmd, "rc": rc, "wall_s": round(time.perf_counter() - t, 2), "peak_mib": peak,
           "peak_method": method, "polls": poller.samples if poller else 0, "killed": bool(killed)}
    with open(a.json, "w") as f:
        json.dump(res, f)
        f.write("\n")
    sys.exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    main()
