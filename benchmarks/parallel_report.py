"""Run a profile's report on one GPU with many runs at once: every cacheable run of the chosen notebooks is
trained in its own process, N at a time, and each notebook's `kdcore report` starts as soon as its runs are in
the run store, so its page is rendered from the store.

Why: a 95k-parameter student at batch 128 uses little of an H100, so N runs share it (on the H100, 10 at once
took 51-105 s per 30-epoch run: results/probes/h100-full-01-02/). The runs are exactly the notebooks' own: the
calls (kdcore.cotrain's mirror of the notebooks' cells) run with one seed per process, and hit the same store keys
(a notebook re-trains anything they missed, only slower).
s/run in the pages is the wall time of a run that shared the GPU with the others.

    python benchmarks/parallel_report.py --profile full --notebooks 01 02 03 04 05 --jobs 12 --deadline 480

Nothing new starts after --deadline seconds; what still runs then is stopped (a report with Ctrl-C, so it
leaves results/ as it was; a run keeps its finished epochs in the run cache's <key>.partial/ and resumes from
them when the same command runs again). Pages go to <out>/<profile>/, whose index is rebuilt at the end. --param values
reach the runs and the reports alike (as in kdcore report). Logs: <logs>/<job>.log; the last lines printed are
a table of what finished.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from kdcore import profiles  # noqa: E402
from kdcore.cotrain import PRELUDE_06, TEACHER, owner, run_calls, run_code  # noqa: E402
from kdcore.report import parse_value  # noqa: E402

@dataclass
class Job:
    name: str
    argv: list[str]
    needs: set[str] = field(default_factory=set)
    report: bool = False
    proc: subprocess.Popen | None = None
    started: float = 0.0
    status: str = "waiting"  # waiting | running | ok | failed | stopped | not started
    seconds: float = 0.0


def overrides(params: list[str], nb: str) -> dict:
    """--param values that notebook `nb` takes (kdcore report applies each where it exists, as here)."""
    given = {k: parse_value(v) for k, v in (item.split("=", 1) for item in params)}
    return {k: v for k, v in given.items() if k in profiles.notebook_defaults(nb)}


def plan(profile: str, notebooks: list[str], params: list[str], out: str, threads: int = 1) -> list[Job]:
    """Jobs in priority order: teachers, the shared CIFAR-10 baseline, each notebook's runs, then the reports
    (a report starts first once its runs are cached)."""
    given = [a for item in params for a in ("--param", item)]
    me = [sys.executable, str(Path(__file__).resolve()), "--profile", profile, *given, "--threads", str(threads),
          "--worker"]
    owners = list(dict.fromkeys(owner(nb) for nb in notebooks))
    jobs = [Job(f"{nb[:2]} teacher", me + [nb, TEACHER[nb], "{}"]) for nb in owners]
    for nb in dict.fromkeys(owners + notebooks):
        teacher = {f"{owner(nb)[:2]} teacher"}
        jobs += [Job(name, me + [nb, code, json.dumps(bind)], set() if "baseline" in name else teacher)
                 for name, code, bind in run_calls(nb, {**profiles.params_for(profile, nb), **overrides(params, nb)})]
    runs = list(jobs)
    for nb in notebooks:
        needs = {j.name for j in runs if j.name[:2] in (nb[:2], owner(nb)[:2])}
        jobs.append(Job(f"{nb[:2]} report", [sys.executable, "-m", "kdcore", "report", "--profile", profile,
                                             "--notebooks", nb, "--out", out, *given], needs, report=True))
    return jobs


def worker(profile: str, params: list[str], threads: int, nb: str, code: str, bindings: str) -> None:
    from kdcore import experiments as ex

    ctx = ex.setup(nb, **{**overrides(params, nb), "profile": profile, "threads": threads})
    namespace = {"ctx": ctx, "ex": ex, **json.loads(bindings)}
    exec(PRELUDE_06 if nb == "06_efficientvit" else "", namespace)
    run_code(code, namespace, nb)


def stop(running: list[Job], grace: float = 20.0) -> None:
    """Ctrl-C to reports (they clean up their stage folder and leave results/ as it was), SIGTERM to runs."""
    for j in running:
        j.proc.send_signal(signal.SIGINT if j.report else signal.SIGTERM)
    end = time.monotonic() + grace
    for j in running:
        try:
            j.proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            j.proc.kill()
        j.status = "stopped"


def schedule(jobs: list[Job], n: int, deadline: float, logs: Path, t0: float) -> None:
    """Start jobs whose inputs are done, N at a time, until none is left or `deadline` seconds after t0
    (or Ctrl-C): then stop the running ones."""
    logs.mkdir(parents=True, exist_ok=True)
    try:
        _loop(jobs, n, deadline, logs, t0)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    running = [j for j in jobs if j.status == "running"]
    stop(running)
    print(f"[{time.monotonic() - t0:5.0f}s] stopped: {', '.join(j.name for j in running) or 'nothing'}", flush=True)
    for j in jobs:
        if j.status == "waiting":
            j.status = "not started"
    print(f"{'job':<24} {'status':<12} seconds")
    for j in jobs:
        print(f"{j.name:<24} {j.status:<12} {j.seconds}")


def _loop(jobs: list[Job], n: int, deadline: float, logs: Path, t0: float) -> None:
    while True:
        now = time.monotonic() - t0
        for j in jobs:
            if j.status == "running" and j.proc.poll() is not None:
                j.status, j.seconds = ("ok" if j.proc.returncode == 0 else "failed"), round(now - j.started)
                print(f"[{now:5.0f}s] {j.name}: {j.status} in {j.seconds}s", flush=True)
        done = {j.name for j in jobs if j.status == "ok"}
        dead = {j.name for j in jobs if j.status in ("failed", "stopped", "not started")}
        for j in jobs:  # a job whose inputs failed cannot start
            if j.status == "waiting" and j.needs & dead:
                j.status = "not started"
        running = [j for j in jobs if j.status == "running"]
        if now >= deadline:
            print(f"[{now:5.0f}s] deadline", flush=True)
            return
        ready = sorted((j for j in jobs if j.status == "waiting" and j.needs <= done), key=lambda j: not j.report)
        for j in ready[:max(0, n - len(running))]:
            j.proc = subprocess.Popen(j.argv, cwd=REPO, stdout=open(logs / f"{j.name.replace(' ', '_')}.log", "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True)
            j.status, j.started = "running", now
            print(f"[{now:5.0f}s] {j.name}: started", flush=True)
        if not running and not ready:
            return
        time.sleep(1)


def main() -> None:
    t0 = time.monotonic()  # --deadline counts from here, data decoding included
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="full")
    ap.add_argument("--notebooks", nargs="+", default=[nb[:2] for nb in profiles.NOTEBOOKS], help="e.g. 01 02 (default: all)")
    ap.add_argument("--jobs", type=int, default=12, help="processes at once (runs and reports)")
    ap.add_argument("--deadline", type=float, default=float("inf"),
                    help="seconds from the start: then running jobs are stopped and nothing new starts")
    ap.add_argument("--out", default="results", help="output root of the reports; pages go to OUT/PROFILE/")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a notebook parameter in runs and reports alike (repeatable), e.g. seeds=[0]")
    ap.add_argument("--logs", default="runs/parallel_report", help="one log file per job")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (default: the CPU's cores / --jobs, at least 1)")
    ap.add_argument("--worker", nargs=3, metavar=("NOTEBOOK", "CODE", "BINDINGS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.profile, args.param, args.threads or 1, *args.worker)
    notebooks = [next(n for n in profiles.NOTEBOOKS if n.startswith(k)) for k in args.notebooks]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)  # on a GPU the device does the work
    jobs = plan(args.profile, notebooks, args.param, args.out, threads)
    from kdcore import experiments as ex  # decode the data once, before the workers share its cache

    for nb in dict.fromkeys(owner(nb) for nb in notebooks):
        ex.setup(nb, **{**overrides(args.param, nb), "profile": args.profile})
    schedule(jobs, args.jobs, args.deadline, REPO / args.logs, t0)
    from kdcore import report  # reports that published at once may each have missed the others: index them all

    ran = [{"notebook": nb, "status": j.status} for nb, j in zip(notebooks, (j for j in jobs if j.report))
           if j.status in ("ok", "failed")]
    if ran:
        print(f"index: {report.write_index(REPO / args.out / args.profile, args.profile, ran, time.monotonic() - t0)}")


if __name__ == "__main__":
    main()
