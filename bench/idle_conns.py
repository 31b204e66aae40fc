#!/usr/bin/env python3
"""Idle keep-alive connections through one proxy, and what they cost it.

Opens keep-alive HTTP/1.1 connections to TARGET (host:port) in steps (for
example 1000, then up to 10000 in all), sends one request on each and reads
its response (so the proxy has accepted, detected and forwarded it, and holds
whatever upstream state it keeps), then leaves every connection idle and open.
After each step, once the proxy has settled, it reads the proxy's memory from
/proc (VmRSS, and the number of open file descriptors, which shows how many
upstream connections the proxy keeps for them).

Prints one JSON object on stdout:
  {"baseline": {...}, "steps": [{"connections": n, "open": n, "rss_kb": ..,
   "fds": .., "bytes_per_conn": ..}, ...]}

Standard library only. Every wait is bounded; it exits by itself.
"""

import argparse
import asyncio
import json
import os
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench.trellis.local\r\nUser-Agent: trellis-bench-idle\r\n\r\n"


def proc_memory(pid):
    """VmRSS and VmHWM in KiB, and the open fd count, of process `pid`."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_kb": out["VmRSS"], "hwm_kb": out["VmHWM"], "fds": fds}


async def read_response(reader):
    """Reads one HTTP/1.1 response with a Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise RuntimeError(f"unexpected status line {status!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)


class Holder:
    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout = host, port, timeout
        self.conns = []  # (reader, writer, watcher task)
        self.closed = 0
        self.failed = 0

    async def _watch(self, reader):
        # An idle connection reads nothing until the peer closes it.
        try:
            data = await reader.read(1)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.closed += 1

    async def _open_one(self, sem):
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.timeout)
                writer.write(REQUEST)
                await writer.drain()
                await asyncio.wait_for(read_response(reader), self.timeout)
            except (OSError, asyncio.TimeoutError, RuntimeError,
                    asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                self.failed += 1
                if self.failed <= 5:
                    print(f"idle_conns: connection failed: {e!r}", file=sys.stderr)
                return
            task = asyncio.ensure_future(self._watch(reader))
            self.conns.append((reader, writer, task))

    async def grow_to(self, n, concurrency):
        sem = asyncio.Semaphore(concurrency)
        need = n - len(self.conns)
        await asyncio.gather(*(self._open_one(sem) for _ in range(need)))

    def open_count(self):
        return len(self.conns) - self.closed


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="host:port the connections are made to")
    p.add_argument("--proxy-pid", type=int, required=True, help="process whose memory is read")
    p.add_argument("--steps", default="1000,10000", help="cumulative connection counts")
    p.add_argument("--concurrency", type=int, default=50,
                   help="connections being opened (request in flight) at once")
    p.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading memory")
    p.add_argument("--timeout", type=float, default=10.0, help="per-connection connect/response bound")
    p.add_argument("--deadline", type=float, default=150.0, help="bound on the whole run, seconds")
    args = p.parse_args()
    host, _, port = args.target.rpartition(":")
    steps = [int(s) for s in args.steps.split(",") if s]

    t0 = time.monotonic()
    holder = Holder(host, int(port), args.timeout)
    await asyncio.sleep(args.settle)
    baseline = proc_memory(args.proxy_pid)
    result = {"target": args.target, "concurrency": args.concurrency, "baseline": baseline, "steps": []}
    for n in steps:
        left = args.deadline - (time.monotonic() - t0)
        if left <= 0:
            raise SystemExit("idle_conns: deadline passed")
        start = time.monotonic()
        await asyncio.wait_for(holder.grow_to(n, args.concurrency), left)
        took = time.monotonic() - start
        await asyncio.sleep(args.settle)
        mem = proc_memory(args.proxy_pid)
        opened = len(holder.conns)
        step = {
            "connections": n,
            "opened": opened,
            "failed": holder.failed,
            "open_at_measurement": holder.open_count(),
            "seconds_to_open": round(took, 2),
            **mem,
            "bytes_per_conn": round((mem["rss_kb"] - baseline["rss_kb"]) * 1024 / max(opened, 1)),
        }
        result["steps"].append(step)
        print(f"idle_conns: {opened} open ({holder.failed} failed), proxy VmRSS {mem['rss_kb']} KiB, "
              f"{mem['fds']} fds", file=sys.stderr)
    # Were they all still open when memory was read? Check once more.
    await asyncio.sleep(0.2)
    result["closed_by_peer_before_exit"] = holder.closed
    for _, writer, task in holder.conns:
        task.cancel()
        writer.close()
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    asyncio.run(main())
