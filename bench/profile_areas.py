#!/usr/bin/env python3
"""Groups a callgrind profile's instructions by area of the proxy.

usage: profile_areas.py [--requests N] [--top K] [--base DUMP]... DUMP [DUMP...]

Runs `callgrind_annotate` on each dump (the instructions, event Ir), adds
the dumps up, subtracts the --base dumps function by function (bench/run.sh's
run *base*: start-up and warm-up only, so what is left is the counted
requests), and prints two Markdown tables: the areas (every function's
exclusive cost, the instructions executed in its own body, assigned to one
area by its name, so the areas add up to the total), and the K functions
with the largest exclusive cost. With --requests, costs are also given per
request. Inclusive costs (a function and everything it calls) are for
reading a call tree and overlap, so they are not summed here: see
`callgrind_annotate --inclusive=yes --tree=caller DUMP`.

The dumps are those bench/run.sh's instructions run leaves in
RUN/instr/SCENARIO/ (see bench/PROFILE.md).
"""

import argparse
import re
import subprocess
import sys

sys.dont_write_bytecode = True

# First match wins: (area, regular expression on the function's name).
AREAS = [
    ("allocation (malloc, free, realloc)",
     r"^(_int_malloc|_int_free|malloc|free|realloc|calloc|_int_realloc|cfree|malloc_consolidate|"
     r"unlink_chunk|tcache|__libc_malloc|__libc_free|__libc_realloc|__libc_calloc|alloc::alloc|"
     r"__rust_alloc|__rust_dealloc|__rust_realloc|__rdl_|mi_|_mi_|je_|_rjem_)"),
    ("memcpy, memmove, memset, memcmp, strlen",
     r"^(__memcpy|__memmove|__memset|__memcmp|memcpy|memmove|memset|memcmp|bcmp|__strlen|__mempcpy|"
     r"__nss_database_lookup|__memchr|memchr)"),
    ("system call wrappers (libc)",
     r"^(epoll_wait|__libc_recv|__libc_send|recv|send|read|write|__GI___|writev|readv|__libc_read|"
     r"__libc_write|syscall|accept4|getsockopt|setsockopt|clock_gettime|__clock_gettime|__vdso|"
     r"__GI_|sendmsg|recvmsg|connect|close|socket)"),
    ("metrics (prometheus-client, trellis metrics labels)",
     r"(prometheus_client|trellis_proxy::metrics|ServiceLabels|normalize_authority)"),
    ("hashing (SipHash, FxHash)", r"(core::hash::sip|SipHasher|<core::hash::|hashbrown|std::hash::random)"),
    ("tracing", r"(^tracing|tracing_core|tracing_subscriber)"),
    ("HTTP/2 (h2)", r"^(<)?h2::"),
    ("hyper HTTP/1 (parse, encode, dispatch)", r"(hyper::proto::h1|httparse|hyper::proto::h1::role)"),
    ("hyper other (client pool, body, service)", r"(^<?hyper::|hyper_util)"),
    ("http types (HeaderMap, Uri, header names)", r"(^<?http::|^<?http_body)"),
    ("TLS (rustls, ring)", r"(rustls|^ring::|ring_core|GFp_|aes_|gcm_|chacha|sha256|ecp_nistz256|bn_)"),
    ("tokio I/O driver and sockets (mio, registration)", r"(tokio::io|tokio::net|mio::|tokio::runtime::io)"),
    ("tokio scheduler, tasks, wakers, timers",
     r"(tokio::runtime|tokio::task|tokio::sync|tokio::time|tokio::util|tokio::loom)"),
    ("bytes (Bytes, BytesMut)", r"(^<?bytes::)"),
    ("futures-util, futures-core", r"(futures_util|futures_core)"),
    ("trellis-proxy data path (forward, conn, io, upstream)", r"(trellis_proxy|trellis_core)"),
    ("Rust std and core (fmt, strings, Arc, RawVec)", r"(^<?core::|^<?std::|^<?alloc::)"),
    ("dynamic linker, libc other", r"(^_dl_|^__tls_get_addr|^_?_?pthread|^__lll|^__GI|^__libc)"),
]


def annotate(dump):
    out = subprocess.run(
        ["callgrind_annotate", "--show=Ir", "--auto=no", "--threshold=100", "--inclusive=no", dump],
        check=True, capture_output=True, text=True).stdout
    costs = {}
    total = 0
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(?:\S*?:)?(.+?)(?:\s+\[.*\])?$", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        name = m.group(2).strip()
        if "PROGRAM TOTALS" in line:
            total += n
            continue
        if name.startswith("file:function") or name == "":
            continue
        costs[name] = costs.get(name, 0) + n
    return total, costs


def short(name):
    """A function name without its generic parameters and source file."""
    name = re.sub(r"^\?\?\?:|^[^ ]+\.(rs|c|S):", "", name)
    prev = None
    while prev != name:
        prev = name
        name = re.sub(r"(?<=[\w\]])<[^<>]*>", "", name)
    return re.sub(r"::h[0-9a-f]{16}$", "", name)[:110]


def area_of(name):
    plain = re.sub(r"^[^:]*\.(c|S|h|rs):", "", name)
    plain = re.sub(r"^\?\?\?:", "", plain)
    for area, rx in AREAS:
        if re.search(rx, plain):
            return area
    return "other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--base", action="append", default=[])
    ap.add_argument("dumps", nargs="+")
    a = ap.parse_args()
    total, costs = 0, {}
    for sign, dumps in ((1, a.dumps), (-1, a.base)):
        for d in dumps:
            t, c = annotate(d)
            total += sign * t
            for k, v in c.items():
                costs[k] = costs.get(k, 0) + sign * v
    per = a.requests or 0
    areas = {}
    for name, n in costs.items():
        ar = area_of(name)
        areas[ar] = areas.get(ar, 0) + n
    listed = sum(costs.values())
    if total > listed:
        areas["below the listing threshold"] = total - listed

    def row(label, n):
        pr = f" | {n / per:,.0f}" if per else ""
        return f"| {label} | {n:,} | {n / max(total, 1):.1%}{pr} |"

    hdr = "| area | instructions | share" + (" | per request |" if per else " |")
    sep = "|---|---:|---:|" + ("---:|" if per else "")
    print(hdr)
    print(sep)
    for ar, n in sorted(areas.items(), key=lambda kv: -kv[1]):
        print(row(ar, n))
    print(row("**total**", total))
    print()
    print("| function (exclusive) | instructions | share" + (" | per request |" if per else " |"))
    print(sep)
    for name, n in sorted(costs.items(), key=lambda kv: -kv[1])[:a.top]:
        print(row(f"`{short(name)}` ({area_of(name).split(' (')[0]})", n))


if __name__ == "__main__":
    main()
