#!/usr/bin/env python3
"""A snapshot of where CPU time has gone, to tell the bench's own work from
interference by other processes on the machine.

usage: cpu_snapshot.py OUT.json [--bench-pid PID] NETNS...
       cpu_snapshot.py --other-seconds BEFORE.json AFTER.json

The second form prints the CPU seconds that user processes outside the
bench's namespaces used between two snapshots, seen or unattributed (below;
run.sh repeats a disturbed run).

Writes, as JSON: per-CPU jiffies from /proc/stat, and for every process its
CPU ticks (utime+stime, all threads) and whether it runs in one of the named
network namespaces (the bench's pods: everything there was started by the
bench). report.py diffs two snapshots. Processes in the host namespace are
"other": the load generator and every proxy run inside the pods, so any CPU
time outside them (a compiler, a test suite) is interference.

Processes that start and exit between two snapshots (a test suite's many
short-lived processes) are in neither. Their time is found by difference:
the CPUs' user+nice+system time, less what every process seen used, less
what the bench's own finished children used (the load generator, reaped by
run.sh: PID's cutime+cstime). That remainder is "unattributed" and counts
as interference too. It errs low (a process that exits between the
snapshots loses its last ticks; interrupt time is left out on both sides).
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
    return (ticks + unattributed_ticks(a, b)) / b["clk_tck"]


def unattributed_ticks(a, b):
    """CPU time between snapshots A and B that no process seen in B accounts
    for, less the bench's own reaped children (clock ticks; 0 if negative, or
    if the snapshots predate this field)."""
    if "bench_children" not in b or "bench_children" not in a:
        return 0
    cpu = sum(b["cpus"][c]["user_sys"] - a["cpus"][c]["user_sys"] for c in b["cpus"])
    seen = 0
    for pid, pb in b["procs"].items():
        pa = a["procs"].get(pid)
        seen += max(0, pb["ticks"] - (pa["ticks"] if pa else 0))
    children = b["bench_children"] - a["bench_children"]
    return max(0, cpu - seen - children)


def main():
    if sys.argv[1] == "--other-seconds":
        print(f"{other_seconds(sys.argv[2], sys.argv[3]):.2f}")
        return
    out, names = sys.argv[1], sys.argv[2:]
    bench_pid = None
    if names[:1] == ["--bench-pid"]:
        bench_pid, names = names[1], names[2:]
    ours = {netns_inode(f"/run/netns/{n}") for n in names} - {None}
    cpus = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                v = [int(x) for x in fields[1:9]]  # user..steal
                cpus[fields[0]] = {"busy": sum(v) - v[3] - v[4], "total": sum(v), "steal": v[7],
                                   "user_sys": v[0] + v[1] + v[2]}
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
    snapshot = {"clk_tck": os.sysconf("SC_CLK_TCK"), "cpus": cpus, "procs": procs}
    if bench_pid is not None:
        with open(f"/proc/{bench_pid}/stat") as f:
            stat = f.read()
        rest = stat[stat.rindex(")") + 2:].split()
        snapshot["bench_children"] = int(rest[13]) + int(rest[14])  # cutime + cstime
    with open(out, "w") as f:
        json.dump(snapshot, f)


if __name__ == "__main__":
    main()
