#!/usr/bin/env python3
"""A snapshot of where CPU time has gone, to tell the bench's own work from
interference by other processes on the machine.

usage: cpu_snapshot.py OUT.json NETNS...
       cpu_snapshot.py --other-seconds BEFORE.json AFTER.json

The second form prints the CPU seconds that user processes outside the
bench's namespaces used between two snapshots (run.sh repeats a disturbed run).

Writes, as JSON: per-CPU jiffies from /proc/stat, and for every process its
CPU ticks (utime+stime, all threads) and whether it runs in one of the named
network namespaces (the bench's pods: everything there was started by the
bench). report.py diffs two snapshots. Processes in the host namespace are
"other": the load generator and every proxy run inside the pods, so any CPU
time outside them (a compiler, a test suite) is interference.
Standard library only.
"""

import json
import os
import sys


def netns_inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def other_seconds(before, after):
    with open(before) as f:
        a = json.load(f)
    with open(after) as f:
        b = json.load(f)
    ticks = 0
    for pid, pb in b["procs"].items():
        if pb["ours"] or pb["kthread"]:
            continue
        pa = a["procs"].get(pid)
        ticks += max(0, pb["ticks"] - (pa["ticks"] if pa else 0))
    return ticks / b["clk_tck"]


def main():
    if sys.argv[1] == "--other-seconds":
        print(f"{other_seconds(sys.argv[2], sys.argv[3]):.2f}")
        return
    out, names = sys.argv[1], sys.argv[2:]
    ours = {netns_inode(f"/run/netns/{n}") for n in names} - {None}
    cpus = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                v = [int(x) for x in fields[1:9]]  # user..steal
                cpus[fields[0]] = {"busy": sum(v) - v[3] - v[4], "total": sum(v), "steal": v[7]}
    me = os.getpid()
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            ns = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue  # exited meanwhile
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2:].split()
        kthread = bool(int(rest[6]) & 0x00200000)  # PF_KTHREAD
        procs[pid] = {"comm": comm, "ticks": int(rest[11]) + int(rest[12]), "ours": ns in ours,
                      "kthread": kthread}
    with open(out, "w") as f:
        json.dump({"clk_tck": os.sysconf("SC_CLK_TCK"), "cpus": cpus, "procs": procs}, f)


if __name__ == "__main__":
    main()
