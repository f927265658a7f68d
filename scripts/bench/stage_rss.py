"""Peak RSS of each stage of one `tripflow run`, for finding which stage a memory figure comes from.

    python3 scripts/bench/stage_rss.py target/release/tripflow run MONTH.parquet --data-dir DIR -v

Runs the command (which must log at INFO, `-v`), reads the process's VmRSS every millisecond (every
10 ms missed load's start, a peak of a few tens of milliseconds) and splits the samples at the
`<stage> done` log lines; each stage's peak comes with when it was reached, in seconds into the
stage. With a DATABASE_URL the private cluster's start-up stays out of the figures. jemalloc's runtime options (`_RJEM_MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0`)
show what is live rather than what the allocator keeps.
"""
import re
import subprocess
import sys
import threading
import time


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done_at = []  # (time, stage)

    def read_log():
        for line in proc.stderr:
            match = re.search(r"\b(ingest|clean|transform|load) done", line)
            if match:
                done_at.append((time.time(), match.group(1)))

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    samples = []  # (time, MiB)
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS"):
                        samples.append((time.time(), int(line.split()[1]) // 1024))
        except FileNotFoundError:
            break
        time.sleep(0.001)
    reader.join(timeout=5)
    if proc.returncode != 0 or not samples:
        sys.exit(f"the command failed (exit {proc.returncode})")
    start = samples[0][0]
    for when, stage in done_at:
        peak, at = max(((mib, t) for t, mib in samples if start <= t <= when), default=(0, start))
        print(f"{stage:10s} {when - start:7.2f} s  peak {peak} MiB at +{at - start:.2f} s")
        start = when
    print(f"{'whole run':10s} {'':9s}  peak {max(mib for _, mib in samples)} MiB")


if __name__ == "__main__":
    main()
