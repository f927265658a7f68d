"""Each Lambda bootstrap's size and init time, the latter against a local stand-in for the runtime API.

Called by scripts/bench.sh with the folder of the release binaries (and, when the arm64 build is
there, the folder of those: their sizes are what Lambda deploys; this machine cannot time them).

Init is what Lambda bills before the first event: from the process's start to its first
`GET /2018-06-01/runtime/invocation/next`, the call that says "ready for an event". Everything a
function does at init happens before it: logging, configuration from the environment, the SDK
clients, the stage functions' extension registration (answered here as the Extensions API would),
and load's database connection (to the bench's own PostgreSQL). The stand-in never answers that
call: the process is killed once it arrives. The S3, Glue and Step Functions endpoints point at a
closed port, as nothing may reach AWS at init.
"""
import argparse
import json
import os
import statistics
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FUNCTIONS = ["tripflow-trigger", "tripflow-ingest", "tripflow-clean", "tripflow-transform", "tripflow-load"]
READY = "/2018-06-01/runtime/invocation/next"
MAX_BOOTSTRAP_MB = 20
MAX_INIT_MS = 50


class RuntimeApi(ThreadingHTTPServer):
    """Answers the calls a function makes at init; notes when the first runtime-API call arrives."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.first_call = None
        self.ready_at = None
        self.ready = threading.Event()
        self.calls = []


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _note(self):
        now = time.monotonic()
        self.server.calls.append(f"{self.command} {self.path}")
        if self.server.first_call is None:
            self.server.first_call = now
        return now

    def do_POST(self):
        self._note()
        if self.path == "/2020-01-01/extension/register":
            body = json.dumps({"functionName": "bench", "functionVersion": "$LATEST", "handler": "bootstrap"})
            self.send_response(200)
            self.send_header("Lambda-Extension-Identifier", "bench-extension")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
        else:
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def do_GET(self):
        now = self._note()
        if self.path == READY:
            self.server.ready_at = now
            self.server.ready.set()
        # The extension's event/next and the runtime's invocation/next stay open, as on Lambda,
        # until the process is killed.
        self.server.ready.wait(timeout=30)
        time.sleep(0.5)


def measure(binary, env, runs):
    """Milliseconds from spawn to the first runtime-API call and to invocation/next, `runs` times."""
    first, ready = [], []
    for _ in range(runs):
        # A stand-in of its own per run: a call of the last run still in flight would count here.
        api = RuntimeApi()
        threading.Thread(target=api.serve_forever, daemon=True).start()
        started = time.monotonic()
        proc = subprocess.Popen([binary], env={**env, "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api.server_port}"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        arrived = api.ready.wait(timeout=20)
        proc.kill()
        _, stderr = proc.communicate()
        api.shutdown()
        api.server_close()
        if not arrived:
            raise SystemExit(f"{binary.name} never asked for an event; calls {api.calls}; "
                             f"its stderr:\n{stderr.decode(errors='replace')[-2000:]}")
        first.append((api.first_call - started) * 1000)
        ready.append((api.ready_at - started) * 1000)
    return statistics.median(first), statistics.median(ready), max(ready)


def report(bin_dir, arm64_dir, database_url, runs):
    """Prints each bootstrap's size and init time, and the two targets."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_LAMBDA_FUNCTION_NAME": "bench",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "TRIPFLOW_BUCKET": "bench",
        "TRIPFLOW_STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:bench",
        "DATABASE_URL": database_url,
    }
    host = os.uname().machine
    deployed_arch = "arm64" if arm64_dir else host
    print(f"\nLambda bootstraps ({bin_dir}): init = spawn to the first `GET {READY}` against a local "
          f"stand-in for the runtime API, median and slowest of {runs} on {host}")
    print(f"  {'function':<20} {deployed_arch + ' MB':>9} {host + ' MB':>10} {'first call ms':>14} "
          f"{'init ms':>8} {'slowest':>8}")
    largest, slowest_init = 0.0, 0.0
    for name in FUNCTIONS:
        binary = Path(bin_dir) / name
        host_mb = binary.stat().st_size / 1e6
        deployed_mb = (Path(arm64_dir) / name).stat().st_size / 1e6 if arm64_dir else host_mb
        first, ready, slowest = measure(binary, env, runs)
        largest, slowest_init = max(largest, deployed_mb), max(slowest_init, ready)
        print(f"  {name:<20} {deployed_mb:>9.1f} {host_mb:>10.1f} {first:>14.1f} {ready:>8.1f} {slowest:>8.1f}")
    return [
        (f"largest Lambda bootstrap ({deployed_arch}), MB", largest, MAX_BOOTSTRAP_MB),
        ("slowest Lambda init (median), ms", slowest_init, MAX_INIT_MS),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True, type=Path, help="the host's release binaries")
    ap.add_argument("--arm64-dir", type=Path, help="the arm64 release binaries, for their sizes")
    ap.add_argument("--database-url", required=True, help="load connects at init")
    ap.add_argument("--runs", type=int, default=11)
    args = ap.parse_args()
    checks = report(args.bin_dir, args.arm64_dir, args.database_url, args.runs)
    print(f"\n  {'target':<48} {'measured':>9} {'at most':>8}")
    for label, value, limit in checks:
        print(f"  {label:<48} {value:>9.2f} {limit:>8.2f}  {'met' if value <= limit else 'MISSED'}")


if __name__ == "__main__":
    main()
