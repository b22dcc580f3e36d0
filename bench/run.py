"""`make bench`: medians of the operations people wait for, each run as a fresh process.

- synthesis of every Azure environment (`python main.py`), wall time and peak memory of the
  whole process tree (Python + the jsii node process), and how it grows per added environment,
  beside just importing the stacks in the same run (the floor: cdktn and the provider classes);
- `python -m deploy --help` (CLI start-up);
- local training of one build on 10,000 synthetic rows, MLflow logging included;
- local `release --to stage` then `--to prod` of one build;
- local `monitor` over 1,000,000 logged rows (20,000 requests of 50 customers) against the time to just
  read those rows (each line parsed as JSON), and over 250,000 rows: memory follows the chunk size.
- batch scoring of 250,000 and 1,000,000 synthetic customers on local Spark (`score --env local`, 2
  cores): the job's time and rows per second, the command's wall time, and the peak memory of the
  whole process tree (driver, JVM, Python workers), beside the in-process pandas baseline (the model
  loaded once, `predict` on the same rows in chunks of 100,000), with one and with two threads.

Results print as a Markdown table (paste it into the README) and go to bench-results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "environments.toml"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def tree_rss_kb(root_pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            statm = (entry / "statm").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        rss[int(entry.name)] = int(statm.split()[1]) * PAGE_KB
    total, frontier = 0, [root_pid]
    while frontier:
        pid = frontier.pop()
        total += rss.get(pid, 0)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return total


def measure(
    command: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,),
    output: list[str] | None = None,
) -> tuple[float, int]:
    """Wall seconds and peak tree RSS (KiB) of one run; fails loudly if the command fails (exits outside `ok`).
    `output`, if given, receives the command's stdout."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE if output is not None else subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, tree_rss_kb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    if output is not None:
        output.append(stdout.decode())
    done.set()
    sampler.join()
    if process.returncode not in ok:
        raise SystemExit(f"bench: {' '.join(command)} failed ({process.returncode}):\n{stderr.decode()[-2000:]}")
    return elapsed, peak


def median_of(
    runs: int, command: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)
) -> dict[str, float]:
    samples = [measure(command, env, ok) for _ in range(runs)]
    return {
        "median_s": round(statistics.median(s for s, _ in samples), 3),
        "peak_mb": round(max(kb for _, kb in samples) / 1024),
        "runs": runs,
    }


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def config_with_extra_envs(folder: Path, extra: int, state_dir: Path) -> Path:
    """The shipped environments plus `extra` copies of dev, to see what one more stack costs."""
    # Ports of its own: the bench must not collide with a demo's (or a test's) slots on the shipped ports.
    stage, prod = free_ports(2)
    text = (CONFIG.read_text().replace('state_dir = ".state/local"', f'state_dir = "{state_dir}"')
            .replace("stage_port = 5301", f"stage_port = {stage}").replace("prod_port = 5302", f"prod_port = {prod}"))
    text += "".join(f'\n[environments.extra{i}]\nprefix = "chrnx{i}"\npurge_protection = false\n' for i in range(extra))
    path = folder / f"environments-{extra}.toml"
    path.write_text(text)
    return path


# Just reading the logged rows: every line parsed, nothing else (the floor any monitor of the log stands on).
READ_ONLY = """
import json, sys
rows = 0
for name in sys.argv[1:]:
    with open(name, encoding="utf-8") as handle:
        for line in handle:
            rows += len(json.loads(line)["inputs"] or ())
print(rows)
"""


def write_request_log(state: Path, rows: int, batch: int = 50) -> Path:
    """`rows` drifted customers as requests of `batch` rows in prod's request log (the router's format)."""
    sys.path.insert(0, str(ROOT))
    from datetime import UTC, datetime, timedelta

    import numpy as np

    from deploy.core.contract import DECISION, FEATURES, PROBABILITY
    from deploy.training import synthetic

    slot = json.loads((state / "serving" / "prod.json").read_text())
    serving = max(slot["traffic"], key=slot["traffic"].get)
    version = slot["deployments"][serving]["version"]
    customers = synthetic.generate(rows, 7, drift=1.0)[list(FEATURES)]
    records = json.loads(customers.to_json(orient="records"))
    chances = np.random.default_rng(7).beta(2, 5, rows).tolist()  # answers in the scoring contract's shape
    path = state / "serving" / "requests" / "prod.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    start = datetime.now(UTC) - timedelta(hours=12)
    with path.open("w") as log:
        for number, first in enumerate(range(0, rows, batch)):
            inputs = records[first:first + batch]
            log.write(json.dumps({
                "time": (start + timedelta(seconds=number)).isoformat(timespec="milliseconds"), "slot": "prod",
                "deployment": serving, "version": version, "status": 200, "latency_ms": 11.5, "inputs": inputs,
                "outputs": [{PROBABILITY: round(chance, 4), DECISION: int(chance >= 0.5)}
                            for chance in chances[first:first + batch]], "error": None,
            }) + "\n")
    return path


SCORING_SIZES = (250_000, 1_000_000)
BASELINE_CHUNK = 100_000


def write_customers(path: Path, rows: int) -> None:
    """`rows` synthetic customers as a CSV, or as Parquet in row groups Spark can split (in a child
    process: the bench itself stays small)."""
    write = (f"to_parquet({str(path)!r}, row_group_size=100_000)" if path.suffix == ".parquet"
             else f"to_csv({str(path)!r}, index=False)")
    code = f"from deploy.training import synthetic; synthetic.generate({rows}, seed={rows}).{write}"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def pandas_baseline(config: str, version: str, csv: str) -> None:
    """The in-process limit of the model: load it once, predict the rows in chunks; prints the predict time."""
    sys.path.insert(0, str(ROOT))  # run as bench/run.py: the project's packages live one folder up
    import pandas as pd

    from config import load_environment
    from deploy.core.contract import FEATURES
    from deploy.platform import tracking
    from deploy.release import registry

    tracking.use_environment(load_environment("local", config))
    model = registry.load_model(registry.model_uri(version))
    rows = pd.read_csv(csv)[list(FEATURES)]  # read before the clock starts: only the model's work is timed
    started = time.perf_counter()
    for start in range(0, len(rows), BASELINE_CHUNK):
        model.predict(rows.iloc[start : start + BASELINE_CHUNK])
    print(json.dumps({"rows": len(rows), "seconds": time.perf_counter() - started}))


def bench_scoring(cli: list[str], cfg: str, folder: Path, runs: int) -> dict[str, dict[str, float]]:
    """Score each size `runs` times with the prod slot's model, and the pandas baseline on the same rows;
    the largest size also from Parquet, to show what parsing the CSV costs."""
    results: dict[str, dict[str, float]] = {}
    inputs = [(rows, folder / f"customers-{rows}.csv") for rows in SCORING_SIZES]
    inputs.append((SCORING_SIZES[-1], folder / f"customers-{SCORING_SIZES[-1]}.parquet"))
    for rows, table in inputs:
        write_customers(table, rows)
        kind = "CSV" if table.suffix == ".csv" else "Parquet"
        jobs, walls, peaks, version = [], [], [], ""
        for run in range(runs):
            output: list[str] = []
            command = [*cli, "score", "--env", "local", "--config", cfg, "--slot", "prod", "--input", str(table),
                       "--date", f"2026-12-{run + 1:02d}", "--json"]
            wall, peak = measure(command, output=output)
            document = json.loads(output[0])
            jobs.append(document["seconds"])
            walls.append(wall)
            peaks.append(peak)
            version = document["model_version"]
        job, wall = statistics.median(jobs), statistics.median(walls)
        results[f"score {rows:,} customers ({kind}), Spark local[2]: the job"] = {
            "median_s": round(job, 3), "rows_per_s": round(rows / job), "peak_mb": round(max(peaks) / 1024),
            "runs": runs,
        }
        results[f"score {rows:,} customers ({kind}), Spark local[2]: the command"] = {
            "median_s": round(wall, 3), "rows_per_s": round(rows / wall), "runs": runs,
        }
        if kind == "CSV":
            results.update(bench_baseline(cfg, version, table, rows, runs))
        print(f"scored {rows:,} ({kind})", file=sys.stderr)
    return results


def bench_baseline(cfg: str, version: str, csv: Path, rows: int, runs: int) -> dict[str, dict[str, float]]:
    """The pandas baseline on the same rows, with one and with two OpenMP threads."""
    results = {}
    for threads in ("1", "2"):
        seconds, peaks = [], []
        for _ in range(runs):
            output: list[str] = []
            _, peak = measure([sys.executable, str(Path(__file__)), "--pandas-baseline", cfg, version, str(csv)],
                              env={"OMP_NUM_THREADS": threads}, output=output)
            seconds.append(json.loads(output[0])["seconds"])
            peaks.append(peak)
        median = statistics.median(seconds)
        plural = "s" if threads != "1" else ""
        results[f"score {rows:,} customers, pandas in process, {threads} thread{plural}: predict"] = {
            "median_s": round(median, 3), "rows_per_s": round(rows / median), "peak_mb": round(max(peaks) / 1024),
            "runs": runs,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per quick measurement (default 5)")
    parser.add_argument("--slow-runs", type=int, default=3, help="runs of training, release and scoring (default 3)")
    parser.add_argument("--only", choices=("synthesis", "scoring", "monitoring"), help="run only this part")
    parser.add_argument("--pandas-baseline", nargs=3, metavar=("CONFIG", "VERSION", "CSV"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.pandas_baseline:
        pandas_baseline(*options.pandas_baseline)
        return
    python = sys.executable
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="churn-bench-") as scratch:
        folder = Path(scratch)
        state = folder / "state"
        out = {"CDKTF_OUTDIR": str(folder / "cdktf.out")}

        if options.only in (None, "synthesis"):
            for extra in (0, 2):
                cfg = config_with_extra_envs(folder, extra, state)
                label = f"synth {2 + extra} environments"
                results[label] = median_of(options.runs, [python, "main.py"], {**out, "CHURN_CONFIG": str(cfg)})
                print(f"{label}: {results[label]}", file=sys.stderr)

            # The floor of synthesis in this run: importing the stacks (cdktn and the provider classes they use).
            results["import the stacks (the floor of synthesis)"] = median_of(
                options.runs, [python, "-c", "import stacks.platform"], out)
            print(f"imports: {results['import the stacks (the floor of synthesis)']}", file=sys.stderr)

            results["python -m deploy --help"] = median_of(options.runs * 2, [python, "-m", "deploy", "--help"])
            print(f"--help: {results['python -m deploy --help']}", file=sys.stderr)

        if options.only != "synthesis":
            cfg = str(config_with_extra_envs(folder, 0, state))
            cli = [python, "-m", "deploy"]
            train_times, release_times = [], []
            try:
                for run in range(options.slow_runs if not options.only else 1):
                    build = f"bench.{run}"
                    train_times.append(measure([*cli, "train", "--env", "local", "--config", cfg, "--build", build])[0])
                    started = time.perf_counter()
                    for slot in ("stage", "prod"):
                        measure([*cli, "release", "--env", "local", "--config", cfg, "--to", slot, "--build", build])
                    release_times.append(time.perf_counter() - started)
                if options.only in (None, "monitoring"):
                    # The monitor of prod (serving the last build) over a log of drifted traffic
                    # (exit 3: drift flagged).
                    for rows in (1_000_000, 250_000):
                        log = write_request_log(state, rows)
                        label = f"{rows:,} logged rows"
                        monitor = [*cli, "monitor", "--env", "local", "--config", cfg, "--window", "1d"]
                        reading = [python, "-c", READ_ONLY, str(log)]
                        results[f"read {label} (the limit)"] = median_of(options.slow_runs, reading)
                        results[f"local monitor over {label}"] = median_of(options.slow_runs, monitor, ok=(0, 3))
                        read, watched = results[f"read {label} (the limit)"], results[f"local monitor over {label}"]
                        print(f"{label}: {read} / {watched}", file=sys.stderr)
                if options.only in (None, "scoring"):
                    results.update(bench_scoring(cli, cfg, folder, options.slow_runs))
            finally:
                subprocess.run([*cli, "down", "--env", "local", "--config", cfg], cwd=ROOT, check=False)
            if not options.only:
                results["local train, 10,000 rows"] = {
                    "median_s": round(statistics.median(train_times), 3), "runs": len(train_times)
                }
                results["local release stage + prod"] = {
                    "median_s": round(statistics.median(release_times), 3), "runs": len(release_times)
                }

    if options.only in (None, "synthesis"):
        growth = results["synth 4 environments"]["median_s"] - results["synth 2 environments"]["median_s"]
        results["synth cost per added environment"] = {"median_s": round(growth / 2, 3), "runs": options.runs}
    if "read 1,000,000 logged rows (the limit)" in results:
        limit = results["read 1,000,000 logged rows (the limit)"]["median_s"]
        results["monitor / read, 1,000,000 rows (goal < 3)"] = {
            "median_s": round(results["local monitor over 1,000,000 logged rows"]["median_s"] / limit, 2), "runs": 1}
    (ROOT / "bench-results").mkdir(exist_ok=True)
    name = "latest.json" if not options.only else f"latest-{options.only}.json"
    (ROOT / "bench-results" / name).write_text(json.dumps(results, indent=2))
    print(f"\nMedians on this machine ({os.cpu_count()} cores):\n")
    print("| operation | median | rows/s | peak memory | runs |\n|---|---|---|---|---|")
    for label, figures in results.items():
        memory = f"{figures['peak_mb']:.0f} MB" if "peak_mb" in figures else "-"
        rate = f"{figures['rows_per_s']:,.0f}" if "rows_per_s" in figures else "-"
        print(f"| {label} | {figures['median_s']:.2f} s | {rate} | {memory} | {figures['runs']} |")


if __name__ == "__main__":
    main()
