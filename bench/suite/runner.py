"""``sockbench run``: the main job.  Runs the pytest-benchmark suite, shows progress, writes the report.

Why it is built this way:

* The suite runs through pytest-benchmark, in a child ``python -m pytest``
  process, so that its storage (``benchmarks/``), its JSON
  (``pytest-benchmark.json``) and ``pytest-benchmark compare`` work exactly as
  they do for any pytest-benchmark suite.  The matrix goes to the child as a
  file (``plan.json``, named by ``SOCKBENCH_PLAN``), and progress comes back
  as a file (``progress.jsonl``), which this process tails to draw a rich
  progress display: the current cell, runs done out of the total, and the
  time left (runs left times the mean time per run so far).
* The child runs in its own session: Ctrl-C reaches this process only, which
  forwards exactly one SIGINT to the child.  pytest then stops after cleaning
  up the round in flight (the harness stops its server and load processes),
  every round finished so far is already in ``raw/``, and the report is built
  from them, marked as incomplete.  ``sockbench report DIR`` rebuilds it later.
* The report is built here, after the child exits, from ``raw/`` only.

Folder written (see ``results/README.md``): ``meta.json``, ``plan.json``,
``raw/``, ``progress.jsonl``, ``pytest.log``, ``pytest-benchmark.json``,
``benchmarks/``, ``plots/``, ``report.md``, ``report.html``.
"""

import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time

from sockbench.bench.report.store import RAW_DIR
from sockbench.bench.suite.plan import default_plan, quick_plan
from sockbench.bench.suite.session import ENV_OUT, ENV_PLAN, PROGRESS_FILE, new_meta, update_meta
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.servers import registry
from sockbench.timestamps import folder_stamp
from sockbench.units import format_size, parse_size

__all__ = ["build_plan", "run_main", "suite_command", "SUITE_FILE"]

SUITE_FILE = "test_echo_bench.py"
#: after a forwarded Ctrl-C, how long pytest gets to stop cleanly before SIGTERM, then SIGKILL
STOP_GRACE_S = 20.0


def _split(values):
    out = []
    for v in values or ():
        out.extend(x for x in str(v).split(",") if x.strip())
    return [x.strip() for x in out]


def build_plan(servers=None, sizes=None, conns=None, quick=False, rounds=None, duration_s=None,
               warmup_s=None, open_pcts=None, server_cpus=None, client_cpus=None, protocols=None):
    """The run's Plan from the command line; any bad value is a one-line UsageError."""
    if servers:
        names = _split(servers)
        for n in names:
            ok, why = registry.get(n).availability()
            if not ok:
                raise UsageError(f"server {n!r} cannot run here: {why}")
    else:
        names = registry.available_names()
        if not names:
            raise SockbenchError("no server is available here (see `sockbench servers`)")
    kw = {}
    if sizes:
        kw["sizes"] = tuple(parse_size(s) for s in _split(sizes))
    if conns:
        try:
            kw["conns"] = tuple(int(c) for c in _split(conns))
        except ValueError:
            raise UsageError(f"bad --conns {' '.join(map(str, conns))!r}; use whole numbers such as 1 10 100") from None
    if open_pcts is not None:
        try:
            kw["open_pcts"] = tuple(int(str(p).rstrip("%")) for p in _split(open_pcts))
        except ValueError:
            raise UsageError(f"bad --open-loads {' '.join(map(str, open_pcts))!r}; use percentages such as 25 50 75 90") from None
    if protocols is not None:
        kw["protocols"] = tuple(_split(protocols))  # each name is checked by the Plan
        if set(kw["protocols"]) == {"raw"}:
            kw["protocols"] = ()  # raw alone has nothing to be compared with: no section
        elif kw["protocols"] and "raw" not in kw["protocols"]:
            # the section exists to show each protocol's cost over raw, measured side by side
            kw["protocols"] = ("raw",) + kw["protocols"]
    if rounds is not None:
        kw["rounds"] = int(rounds)
    if duration_s is not None:
        kw["duration_s"] = float(duration_s)
    if warmup_s is not None:
        kw["warmup_s"] = float(warmup_s)
    if server_cpus is not None:
        kw["server_cpus"] = tuple(server_cpus)
    if client_cpus is not None:
        kw["client_cpus"] = tuple(client_cpus)
    kw["speaks"] = {n: list(registry.get(n).protocols) for n in names}
    plan = (quick_plan if quick else default_plan)(names, **kw)
    if protocols and plan.protocols and not any(plan.server_protocols(n) for n in names):
        raise UsageError(f"no chosen server speaks {' or '.join(p for p in plan.protocols if p != 'raw') or 'a framed protocol'}; "
                         f"see `sockbench servers`")
    # the open-loop sweep runs where its peak was measured: the closed grid's smallest size
    # (64 B when present) and highest concurrency
    plan = dataclasses.replace(
        plan,
        open_size=64 if 64 in plan.sizes else min(plan.sizes),
        open_conns=max(plan.conns),
    )
    allowed = os.sched_getaffinity(0)
    for label, cpus in (("server", plan.server_cpus), ("client", plan.client_cpus)):
        missing = sorted(set(cpus) - allowed)
        if missing:
            raise UsageError(f"--{label}-cpus {','.join(map(str, missing))} not available here; usable CPUs: "
                             f"{','.join(map(str, sorted(allowed)))}")
    return plan


def suite_command(out):
    """The child pytest command line for a results folder."""
    bench_dir = os.path.dirname(os.path.abspath(__file__))  # the suite's own room: conftest.py beside it
    out = os.path.abspath(out)
    return [
        sys.executable, "-m", "pytest", os.path.join(bench_dir, SUITE_FILE),
        "-p", "no:cacheprovider", "-o", "addopts=", "--import-mode=importlib", "-q",
        "--rootdir", bench_dir,
        "--benchmark-json", os.path.join(out, "pytest-benchmark.json"),
        "--benchmark-storage", "file://" + os.path.join(out, "benchmarks"),
        "--benchmark-save", "sockbench",
        "--benchmark-columns", "min,median,max,stddev,ops,rounds",
        "--benchmark-group-by", "group",
    ]


def _prepare_out(out):
    out = out or os.path.join("results", folder_stamp())
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UsageError(f"--out {out} is a file, not a folder")
        if os.listdir(out):
            raise UsageError(f"{out} already holds files; pick an empty or new --out folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise SockbenchError(f"cannot create the results folder {out}: {e.strerror}") from None
    return out


class _Tail:
    """Read the JSON lines the suite appends to progress.jsonl."""

    def __init__(self, path):
        self.path = path
        self.pos = 0
        self.buf = b""

    def read(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _fmt_left(s):
    s = max(0, int(round(s)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class _Follow:
    """What the display shows of the suite, updated from the events of progress.jsonl."""

    def __init__(self, plan, live):
        self.plan = plan
        self.live = live
        self.total = plan.total_runs()
        self.done = 0
        self.current = "starting"
        self.cell_msgs = []
        self.lines = []          # cell summaries to print (no terminal), held while a load runs
        self.quiet_until = 0     # CLOCK_MONOTONIC ns: a load window is open until then

    def on_event(self, ev):
        if ev.get("event") == "window":
            self.quiet_until = max(self.quiet_until, int(ev.get("end_ns") or 0))
        elif ev.get("event") == "cell":
            self.current = f"[{ev.get('index', -1) + 1}/{len(self.plan.cells())}] {ev.get('desc', ev.get('cell'))}"
            self.cell_msgs = []
        elif ev.get("event") == "calibrate":
            self.current = f"calibrating {ev.get('server')} for the open-loop sweep"
        elif ev.get("event") == "round":
            self.done += 1
            self.cell_msgs.append(ev.get("msgs_per_s") or 0.0)
            if not self.live and (len(self.cell_msgs) == self.plan.rounds or str(ev.get("cell", "")).startswith("calibrate:")):
                flags = "" if ev.get("valid", True) else " INVALID"
                med = sorted(self.cell_msgs)[len(self.cell_msgs) // 2]
                self.lines.append(f"{self.done}/{self.total} runs  {self.current}: {med:,.0f} msgs/s "
                                  f"(median of {len(self.cell_msgs)}){flags}")

    def flush(self, console):
        for line in self.lines:
            console.print(line, highlight=False)
        self.lines = []


def _progress(console, live):
    # rich is imported only when a run starts: `sockbench run --help` and bad input stay quick
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}", table_column=None),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        TextColumn("[cyan]{task.fields[left]} left"),
        console=console,
        disable=not live,
        transient=False,
        auto_refresh=False,  # drawn only between load windows, see _watch
    )


def _watch(child, out, plan, console):
    """Follow the child until it exits; returns True if the user pressed Ctrl-C."""
    tail = _Tail(os.path.join(out, PROGRESS_FILE))
    live = console.is_terminal
    state = _Follow(plan, live)
    progress = _progress(console, live)
    t0 = time.monotonic()
    interrupted = False
    with progress:
        task = progress.add_task(state.current, total=state.total, left=_fmt_left(state.total * plan.seconds_per_run()))

        def draw(**fields):
            progress.update(task, description=state.current, **fields)
            if live:
                progress.refresh()

        while True:
            try:
                finished = child.poll() is not None
                for ev in tail.read():
                    state.on_event(ev)
                now = time.monotonic_ns()
                if now < state.quiet_until and not finished:
                    # A load is being measured: drawing a frame costs ~2 ms of a CPU that the server or
                    # the client is using (in a terminal it raised cython's open-loop p99 from ~40 us to
                    # 1-1.7 ms).  Sleep past the window's end instead.
                    time.sleep(min((state.quiet_until - now) / 1e9 + 0.005, 1.0))
                    continue
                state.flush(console)
                per_run = (time.monotonic() - t0) / state.done if state.done else plan.seconds_per_run()
                draw(completed=state.done, left=_fmt_left(max(0, state.total - state.done) * per_run))
                if finished:
                    break
                time.sleep(0.2)
            except KeyboardInterrupt:
                if interrupted:
                    continue  # already stopping; a second Ctrl-C changes nothing
                interrupted = True
                state.current = "interrupted: stopping after the round in flight"
                draw()
                _stop_child(child)
    return interrupted


def _stop_child(child):
    if child.poll() is not None:
        return
    try:
        os.kill(child.pid, signal.SIGINT)
    except ProcessLookupError:
        return


def _wait_child(child):
    try:
        child.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _protocols_line(plan):
    served = [n for n in plan.servers if plan.server_protocols(n)]
    if not served:
        return "none"
    return (f"{'/'.join(plan.protocols)} at {format_size(plan.proto_size)} x {plan.proto_conns} conns x "
            f"depth {plan.proto_depth} for {len(served)} server{'s' if len(served) != 1 else ''}")


def _announce(plan, out, console):
    n_servers = len(plan.servers)
    console.print(f"sockbench run: {n_servers} server{'s' if n_servers != 1 else ''}, {len(plan.cells())} cells, "
                  f"{plan.total_runs()} load runs of {plan.warmup_s:g}+{plan.duration_s:g} s "
                  f"(sizes {', '.join(format_size(s) for s in plan.sizes)}; conns {', '.join(map(str, plan.conns))}; "
                  f"open loop {', '.join(f'{p}%' for p in plan.open_pcts) or 'none'}; "
                  f"protocols {_protocols_line(plan)}); "
                  f"about {_fmt_left(plan.total_runs() * plan.seconds_per_run())} -> {out}", highlight=False)


def _run_suite(out, plan, console):
    """Run the suite as a child pytest, following its progress; returns ``(exit status, interrupted)``."""
    env = dict(os.environ, **{ENV_PLAN: os.path.abspath(os.path.join(out, "plan.json")), ENV_OUT: os.path.abspath(out)})
    with open(os.path.join(out, "pytest.log"), "wb") as log:
        child = subprocess.Popen(suite_command(out), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env=env, start_new_session=True)
        try:
            interrupted = _watch(child, out, plan, console)
        except BaseException:
            _stop_child(child)
            _wait_child(child)
            raise
        try:
            _wait_child(child)
        except KeyboardInterrupt:
            interrupted = True
            _wait_child(child)
    return child.returncode, interrupted


def _status(rc, interrupted):
    """The run's status for meta.json: pytest exits 2 when it was interrupted."""
    if interrupted or rc == 2:
        return "interrupted"
    return "complete" if rc == 0 else "failed"


def _print_outcome(rep, status, finished, plan, elapsed_s, console):
    flagged = {}
    for c in rep["results"].cells.values():
        for f in c.flags():
            flagged[f] = flagged.get(f, 0) + 1
    console.print(f"{status}: {finished} of {plan.total_runs()} load runs in {elapsed_s:.0f} s", highlight=False)
    if flagged:
        console.print("warnings: " + ", ".join(f"{n} {f.lower()} cell{'s' if n != 1 else ''}" for f, n in sorted(flagged.items()))
                      + " (see the report)", highlight=False)
    console.print(f"report: {rep['html']}", highlight=False, soft_wrap=True)
    console.print(f"        {rep['md']}", highlight=False, soft_wrap=True)


def run_main(plan, out=None, console=None, argv=None):
    """Run the suite for ``plan`` into ``out`` (default ``results/<UTC time>``), then the report.

    Returns the exit status: 0 complete, 130 interrupted, 1 if the suite failed.
    """
    # deferred: rich, and matplotlib behind the report, cost ~0.5 s to import
    from rich.console import Console

    from sockbench.bench.report.document import build_report

    console = console or Console(soft_wrap=True)
    out = _prepare_out(out)
    plan.save(os.path.join(out, "plan.json"))
    write_json_atomic(os.path.join(out, "meta.json"), new_meta(plan, argv))
    _announce(plan, out, console)
    t0 = time.monotonic()
    rc, interrupted = _run_suite(out, plan, console)
    finished = len(glob.glob(os.path.join(out, RAW_DIR, "*.json")))
    status = _status(rc, interrupted)
    update_meta(out, status=status, finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                elapsed_s=round(time.monotonic() - t0, 1), finished_runs=finished, pytest_exit=rc)
    log_path = os.path.join(out, "pytest.log")
    if not finished:
        raise SockbenchError(f"no load run finished ({status}, pytest exit {rc}); nothing to report; see {log_path}")
    rep = build_report(out)
    _print_outcome(rep, status, finished, plan, time.monotonic() - t0, console)
    if status == "interrupted":
        console.print(f"interrupted: the report covers the runs that finished; rebuild it with `sockbench report {out}`",
                      highlight=False, soft_wrap=True)
        return 130
    if status == "failed":
        raise SockbenchError(f"the benchmark suite failed (pytest exit {rc}); the report covers the runs that finished; see {log_path}")
    return 0
