"""tripflow beside its anchors, same machine, same session: the figures behind issue 8's targets.

Called by scripts/bench.sh (which builds the release binary and installs the anchors in .venv).

For each month size (1x, and 10x unless --no-10x) it generates the month with `tripflow gen`, then
runs, interleaved, RUNS times each (RUNS_10X at 10x), every contender as a whole process under
/usr/bin/time:
  tripflow      `tripflow run` into a fresh database of one private PostgreSQL cluster
  duckdb-part   DuckDB clean + transform into Hive partitions by pickup_date (zstd)
  duckdb-1file  the same into one file (zstd level 1): DuckDB's fastest configuration
  polars-part   Polars, partitioned like duckdb-part
  copy          PostgreSQL's server-side binary COPY of the same curated rows, unindexed table
and prints the medians (with each run's seconds) and the ratios issue 8 sets targets for. With
--lambda-dir it also measures each Lambda bootstrap's size and init time (lambda_init.py).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def timed(cmd, env=None, stdout=subprocess.DEVNULL):
    """Runs cmd under /usr/bin/time; returns (seconds, peak RSS MiB, stdout text)."""
    # What the previous contender wrote (a 10x run writes gigabytes) and what the bench deleted
    # after it would otherwise be written back during this one's time.
    os.sync()
    with tempfile.NamedTemporaryFile("r") as report:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", report.name, *map(str, cmd)],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0:
            sys.exit(f"failed: {' '.join(map(str, cmd))}\n{proc.stderr[-3000:]}")
        seconds, kib = report.read().split()[-2:]
    return float(seconds), int(kib) / 1024, proc.stdout or ""


def psql(url, sql):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--rows", type=int, default=1_930_000)
    # A 1x round takes some 10 s and this VM's speed drifts by 10-20% within an hour: five rounds
    # settle the 1x medians better than three. A 10x round takes minutes.
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--runs-10x", type=int, default=3)
    ap.add_argument("--no-10x", action="store_true")
    ap.add_argument("--work", default=None)
    ap.add_argument("--lambda-dir", help="the host's release Lambda binaries: their init times")
    ap.add_argument("--lambda-arm64-dir", help="the arm64 release Lambda binaries: their sizes")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="tripflow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o777)  # the cluster's server user writes and reads the COPY file here
    cluster = work / "cluster"
    base_url = subprocess.run(
        [args.bin, "db", "url", "--data-dir", cluster], check=True, text=True, stdout=subprocess.PIPE
    ).stdout.strip()
    database_counter = [0]

    def fresh_database():
        database_counter[0] += 1
        name = f"bench_{database_counter[0]}"
        psql(base_url, f"DROP DATABASE IF EXISTS {name}")
        psql(base_url, f"CREATE DATABASE {name}")
        return base_url.rsplit("/", 1)[0] + "/" + name

    sizes = [("1x", args.rows, args.runs)] + ([] if args.no_10x else [("10x", args.rows * 10, args.runs_10x)])
    results = {}
    try:
        for label, rows, runs in sizes:
            month_dir = work / label
            month_dir.mkdir(exist_ok=True)
            source = month_dir / "yellow_tripdata_2021-03.parquet"
            subprocess.run([args.bin, "gen", "--month", "2021-03", "--rows", str(rows), source], check=True,
                           stdout=subprocess.DEVNULL)
            # The COPY anchor loads exactly the rows tripflow curates: one run to get them.
            prep = fresh_database()
            subprocess.run([args.bin, "run", source, "--data-dir", month_dir / "prep", "--json"], check=True,
                           env={**os.environ, "DATABASE_URL": prep}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            copy_file = work / f"curated-{label}.bin"
            psql(prep, f"COPY (SELECT * FROM tripflow.trips) TO '{copy_file}' (FORMAT binary)")

            samples = {k: [] for k in ["tripflow", "duckdb-part", "duckdb-1file", "polars-part", "copy"]}
            stages = []
            for run in range(runs):
                print(f"  {label} run {run + 1}/{runs}", file=sys.stderr, flush=True)
                url = fresh_database()
                data = month_dir / f"data-{run}"
                s, rss, out = timed([args.bin, "run", source, "--data-dir", data, "--json"],
                                    env={"DATABASE_URL": url}, stdout=None)
                samples["tripflow"].append((s, rss))
                stages.append(json.loads(out)["stage_seconds"])
                for name, cmd in [
                    ("duckdb-part", [PY, HERE / "anchor_duckdb.py", source, month_dir / f"duck-{run}", "partitioned"]),
                    ("duckdb-1file", [PY, HERE / "anchor_duckdb.py", source, month_dir / f"duck1-{run}", "one-file"]),
                    ("polars-part", [PY, HERE / "anchor_polars.py", source, month_dir / f"polars-{run}"]),
                    ("copy", [PY, HERE / "anchor_copy.py", prep, copy_file]),
                ]:
                    if name == "duckdb-1file":
                        (month_dir / f"duck1-{run}").mkdir(exist_ok=True)
                    samples[name].append(timed(cmd)[:2])
                # Keep the disk for the next run: a 10x month's outputs and database are gigabytes.
                for out in [data, month_dir / f"duck-{run}", month_dir / f"duck1-{run}", month_dir / f"polars-{run}"]:
                    shutil.rmtree(out, ignore_errors=True)
                psql(base_url, f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]}")
            psql(base_url, f"DROP DATABASE IF EXISTS {prep.rsplit('/', 1)[1]}")
            copy_file.unlink(missing_ok=True)
            shutil.rmtree(month_dir, ignore_errors=True)
            results[label] = (rows, samples, stages)
        lambda_checks = []
        if args.lambda_dir:
            import lambda_init

            lambda_checks = lambda_init.report(args.lambda_dir, args.lambda_arm64_dir, fresh_database(), 11)
    finally:
        subprocess.run([args.bin, "db", "stop", "--data-dir", cluster], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        # A 10x month leaves gigabytes (its cluster above all); a folder of our own making goes whole,
        # also when a run was interrupted, so no bench fills the disk of the next build.
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    report(results, lambda_checks)


def medians(samples, stages):
    """Each contender's median (seconds, peak RSS), and tripflow's median seconds per stage."""
    med = {k: (statistics.median(x for x, _ in v), statistics.median(m for _, m in v)) for k, v in samples.items()}
    return med, {k: statistics.median(s[k] for s in stages) for k in stages[0]}


def report(results, lambda_checks):
    print(f"\ntripflow beside its anchors: medians of interleaved runs, whole processes, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    for label, (rows, samples, stages) in results.items():
        med, st = medians(samples, stages)
        print(f"\n{label}: {rows:,} generated rows, {len(stages)} runs")
        print(f"  {'contender':<14} {'seconds':>8} {'peak RSS MiB':>13}   seconds of each run")
        for name, (s, rss) in med.items():
            each = " ".join(f"{x:.2f}" for x, _ in samples[name])
            print(f"  {name:<14} {s:>8.2f} {rss:>13.0f}   {each}")
        print("  tripflow stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in st.items()))
        # A slow run shows which stage it lost its time in (the first 10x run has been some 6 s slower).
        print("  tripflow stages, each run (" + "/".join(stages[0]) + "): "
              + "  ".join("/".join(f"{v:.2f}" for v in s.values()) for s in stages))
        # The VM's speed drifts within a bench; a round's contenders run one after the other (within
        # seconds at 1x), so each round's own ratio shows how much of the medians' ratio is the machine.
        paired = [(s["clean"] + s["transform"]) / d for s, (d, _) in zip(stages, samples["duckdb-part"])]
        print("  clean + transform / DuckDB partitioned, each run: " + " ".join(f"{r:.2f}" for r in paired))

    med, st = medians(*results["1x"][1:])
    ct = st["clean"] + st["transform"]
    checks = [
        ("clean + transform / DuckDB partitioned", ct / med["duckdb-part"][0], 1.0),
        ("clean + transform / DuckDB one file (stretch)", ct / med["duckdb-1file"][0], 0.67),
        ("load / server binary COPY", st["load"] / med["copy"][0], 1.3),
        ("answers after the load, seconds", st["queries"], 0.05),
        ("whole run / (DuckDB partitioned + COPY)", med["tripflow"][0] / (med["duckdb-part"][0] + med["copy"][0]), 1.5),
        ("1x peak RSS, MiB", med["tripflow"][1], 160),
    ]
    if "10x" in results:
        med10, _ = medians(*results["10x"][1:])
        checks += [
            ("10x whole run / 1x whole run", med10["tripflow"][0] / med["tripflow"][0], 10.5),
            ("10x peak RSS / 1x peak RSS", med10["tripflow"][1] / med["tripflow"][1], 1.1),
        ]
    checks += lambda_checks
    print(f"\n  {'target':<48} {'measured':>9} {'at most':>8}")
    for name, value, limit in checks:
        print(f"  {name:<48} {value:>9.2f} {limit:>8.2f}  {'met' if value <= limit else 'MISSED'}")


if __name__ == "__main__":
    main()
