#!/usr/bin/python3
"""A real gRPC echo server and client for Trellis end-to-end tests.

No protoc or generated code: the service is registered with grpcio's generic
handlers, and messages are raw bytes (no (de)serializers), which is all a
proxy sees anyway.

Service ``trellis.test.Echo``:

  Unary         answers the request unchanged
  ServerStream  sends the request back N times, N = its first byte
                (5 when the request is empty)
  BidiStream    answers each request unchanged, in order
  Fail          aborts with the status code whose number is the request's
                first byte (e.g. 14, UNAVAILABLE)

Every response carries the initial metadata ``x-served-by: NAME``.

  python3 scripts/grpc_echo.py serve --port P [--bind 0.0.0.0] [--name NAME]
  python3 scripts/grpc_echo.py call --target HOST:PORT \\
      --kind unary|server-stream|bidi|fail --count N [--code C] \\
      [--authority A] [--timeout SECONDS]

``serve`` prints ``listening on HOST:PORT`` on stderr once bound and stops
cleanly on SIGTERM or SIGINT. ``call`` prints one JSON line and exits 0 only
when every answer matched (for ``fail``: when the expected code came back).

grpcio: Debian's python3-grpcio is built for /usr/bin/python3. When this
script is started by another interpreter that lacks the grpc module (a
pyenv ``python3`` on PATH, say), it re-runs itself under /usr/bin/python3.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

try:
    import grpc
except ImportError:
    _DEBIAN_PYTHON = "/usr/bin/python3"
    if (
        os.path.exists(_DEBIAN_PYTHON)
        and os.path.realpath(sys.executable) != os.path.realpath(_DEBIAN_PYTHON)
        and not os.environ.get("TRELLIS_GRPC_ECHO_REEXEC")
    ):
        os.environ["TRELLIS_GRPC_ECHO_REEXEC"] = "1"
        os.execv(_DEBIAN_PYTHON, [_DEBIAN_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])
    sys.exit(
        "grpc_echo.py: the grpc module is missing; run scripts/install-deps.sh "
        "(it installs Debian's python3-grpcio for /usr/bin/python3)"
    )

from concurrent import futures

SERVICE = "trellis.test.Echo"
DEFAULT_STREAM_COUNT = 5


# ---------------------------------------------------------------- server


def make_handler(name):
    served_by = (("x-served-by", name),)

    def unary(request, context):
        context.send_initial_metadata(served_by)
        return request

    def server_stream(request, context):
        context.send_initial_metadata(served_by)
        n = request[0] if request else DEFAULT_STREAM_COUNT
        for _ in range(n):
            yield request

    def bidi(requests, context):
        context.send_initial_metadata(served_by)
        for request in requests:
            yield request

    def fail(request, context):
        context.send_initial_metadata(served_by)
        number = request[0] if request else grpc.StatusCode.UNKNOWN.value[0]
        code = next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)
        context.abort(code, f"{name}: failing with {code.name} as asked")

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            # No (de)serializers: requests and responses are raw bytes.
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "BidiStream": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )


def serve(args):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((make_handler(args.name),))
    address = f"{args.bind}:{args.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:  # newer grpcio raises instead of returning 0
        sys.exit(f"grpc_echo.py: cannot listen on {address}: {e}")
    if port == 0:
        sys.exit(f"grpc_echo.py: cannot listen on {address}")
    server.start()

    stopping = threading.Event()

    def on_signal(signum, _frame):
        if not stopping.is_set():
            stopping.set()
            print(f"{signal.Signals(signum).name}: shutting down", file=sys.stderr, flush=True)
            server.stop(grace=2)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"listening on {args.bind}:{port} (gRPC {SERVICE}, name {args.name})", file=sys.stderr, flush=True)
    # Wake up now and then so signal handlers run promptly.
    while server.wait_for_termination(timeout=0.5):
        pass
    return 0


# ---------------------------------------------------------------- client


class Mismatch(Exception):
    pass


def served_by(call):
    for key, value in call.initial_metadata() or ():
        if key == "x-served-by":
            return value
    return None


def call(args):
    options = [("grpc.enable_retries", 0)]
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    result = {"kind": args.kind, "target": args.target, "count": args.count, "ok": False, "received": 0}
    started = time.monotonic()
    code = 0
    try:
        with grpc.insecure_channel(args.target, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
            result["served_by"] = sorted(run_kind(channel, args, result))
            result["ok"] = True
    except grpc.FutureTimeoutError:
        result["error"] = f"no connection to {args.target} within {args.timeout}s"
        code = 1
    except grpc.RpcError as e:
        result["code"] = e.code().name
        result["error"] = e.details()
        code = 1
    except Mismatch as e:
        result["error"] = str(e)
        code = 1
    result["elapsed_ms"] = round((time.monotonic() - started) * 1e3, 3)
    print(json.dumps(result), flush=True)
    return code


def run_kind(channel, args, result):
    """Runs the calls; returns the set of x-served-by names seen."""
    path = lambda method: f"/{SERVICE}/{method}"  # noqa: E731
    names = set()
    if args.kind == "unary":
        unary = channel.unary_unary(path("Unary"))
        for i in range(args.count):
            request = f"unary {i}".encode()
            response, c = unary.with_call(request, timeout=args.timeout)
            names.add(served_by(c))
            if response != request:
                raise Mismatch(f"call {i}: sent {request!r}, got {response!r}")
            result["received"] += 1
    elif args.kind == "server-stream":
        if not 1 <= args.count <= 255:
            raise Mismatch("--count for server-stream must be from 1 to 255")
        request = bytes([args.count]) + b" server-stream"
        responses = channel.unary_stream(path("ServerStream"))(request, timeout=args.timeout)
        for response in responses:
            if response != request:
                raise Mismatch(f"message {result['received']}: sent {request!r}, got {response!r}")
            result["received"] += 1
        names.add(served_by(responses))
        if result["received"] != args.count:
            raise Mismatch(f"expected {args.count} messages, got {result['received']}")
    elif args.kind == "bidi":
        requests = [f"bidi {i}".encode() for i in range(args.count)]
        responses = channel.stream_stream(path("BidiStream"))(iter(requests), timeout=args.timeout)
        for i, response in enumerate(responses):
            if i >= len(requests) or response != requests[i]:
                want = requests[i] if i < len(requests) else None
                raise Mismatch(f"message {i}: expected {want!r}, got {response!r}")
            result["received"] += 1
        names.add(served_by(responses))
        if result["received"] != args.count:
            raise Mismatch(f"expected {args.count} messages, got {result['received']}")
    elif args.kind == "fail":
        fail = channel.unary_unary(path("Fail"))
        want = next((c for c in grpc.StatusCode if c.value[0] == args.code), None)
        if want is None or want == grpc.StatusCode.OK:
            raise Mismatch(f"--code {args.code} is not a failing gRPC status code")
        for i in range(args.count):
            try:
                fail(bytes([args.code]), timeout=args.timeout)
            except grpc.RpcError as e:
                names.add(served_by(e))
                if e.code() != want:
                    raise Mismatch(f"call {i}: expected {want.name}, got {e.code().name}: {e.details()}")
                result["received"] += 1
                continue
            raise Mismatch(f"call {i}: expected {want.name}, got OK")
    names.discard(None)
    return names


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description="gRPC echo server and client for Trellis tests")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the echo server")
    s.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    s.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    s.add_argument("--name", default="grpc-echo", help="sent as x-served-by initial metadata")

    c = sub.add_parser("call", help="call the echo server and check the answers")
    c.add_argument("--target", required=True, help="HOST:PORT")
    c.add_argument("--kind", required=True, choices=["unary", "server-stream", "bidi", "fail"])
    c.add_argument("--count", type=int, default=1, help="calls (unary, fail) or messages (streams)")
    c.add_argument("--code", type=int, default=14, help="status code number for --kind fail (default 14)")
    c.add_argument("--authority", help="the :authority to send instead of the target")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds for connecting and for each call")

    args = parser.parse_args()
    if args.command == "serve":
        return serve(args)
    if args.count < 1:
        parser.error("--count must be at least 1")
    return call(args)


if __name__ == "__main__":
    sys.exit(main())
