#!/usr/bin/env python3
"""The headline workload (issue 13, "F1") on a local cluster, measured per component.

    python3 bench/f1.py [--scale third|full] [--append BENCHMARKS.md] [--pin] [--perf DIR]
                        [--no-nats | --nats-only] [--nats-arrivals poisson|periodic] [--keep]
                        [--save DIR] [--bin-dir DIR] [--seed N]

Builds the release `chat-server`, `loadtest-agent` and `ltparse` (`ltops` is whichever build is
there, release or the test build's debug one, built if missing), creates a local
cluster in a private LTOPS_HOME (2 agents, PostgreSQL, 2 server instances, as the issue's user
did), runs the workload below scaled (`full`: 30,000 users, 15 channels of 2,000 members, 21
posts/s; `third`: 10,000 users, 5 such channels, 7 posts/s: the same 2,000-member broadcasts at a
third of the rate), and meanwhile samples every component's CPU (user and kernel time apart,
from /proc/PID/stat; PostgreSQL as its postmaster and every backend) and memory (PSS, so shared
pages count once) each second. The
steady window starts 30 s after the last interval of the ramp-up and ends with the run; CPU is
reported as cores over it, memory at its end. The run's own figures come from `ltparse --display
json -v` over the results: deliveries per second, delivery p99 over the run and per interval in
the window, missing deliveries, actions started late, errors. The cluster is deleted at the end
(`--keep` leaves it and the home; `--save DIR` copies the run's results files to DIR first).

Then, unless `--no-nats`, the same shape on NATS (`nats_run`): two `nats-server` instances joined
by a route, one subscriber connection per user from two `nats-fanout` processes (the workspace's
lean client), one publisher at the same rate, its messages a Poisson stream as the agents' posts
are (`--nats-arrivals periodic` spaces them evenly, as before 2026-12-06: a gentler load for the
tail), for as long as the F1 run's steady window, sampled the same way, so chat-server's CPU per
delivery and the delivery p99 per 10 s interval are set against the anchor's in the same run.
`--pin` puts the servers, PostgreSQL and the NATS servers on CPU 0 and the load generators on
CPU 1, so each side's cost shows on its own.
`--perf DIR` profiles server-0 and agent-0 for 30 s of the steady window (DIR/NAME.txt).
`--seed N` is the run's seed (`[run] seed`, default 1) and the anchor's publisher's: it fixes
when every post is sent, so every run with one seed has the same bursts of posts in the same
intervals (`cargo run --release -p loadtest-agent --example arrivals` lists them and
`bench/fanout_model.py --arrivals` models their latency).
`--bin-dir DIR` runs another checkout's release `chat-server` and `loadtest-agent` (an older
commit, say) under this checkout's `ltops` and `ltparse`, so two builds compare on one VM.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SCALES = {
    # users, channels of 2,000, posts/s, ramp-up, duration
    "full": (30000, 15, 21.0, "5m", "10m"),
    "third": (10000, 5, 7.0, "100s", "200s"),
}

WORKLOAD = """preset = "extreme"
[target]
url = "http://127.0.0.1:8065"
admin_password = "Lt-Admin-Passw0rd!"
[dataset]
teams = 1
users = {users}
posts_per_channel = 5
[[dataset.channels]]
count = {channels}
members = 2000
[users]
count = {users}
ramp_up = "{ramp}"
duration = "{duration}"
[behaviour]
mode = "open"
posts_per_second = {pps}
mean_interval = "240s"
interval_jitter = "60s"
reply_fraction = 0.1
[run]
interval = "10s"
thresholds = ["delivery.p99<50ms", "*.error_rate<1%"]
seed = {seed}
"""


def run(cmd, **kw):
    print("$", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def stat(pid, pss=None):
    """(user ticks, system ticks, memory bytes) of one process, or None when it is gone. Memory
    is the proportional set size (PSS): pages shared between processes (PostgreSQL's shared
    buffers, in every backend) count once in all, not once per process. Reading it walks the
    process's mappings (5-12 ms for a server holding 15,000 sockets), so a caller that has a
    recent figure passes it as `pss` and only the CPU ticks are read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        rollup = None if pss is not None else Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    f = text[text.rindex(")") + 2:].split()
    if rollup is not None:
        pss = next((int(l.split()[1]) * 1024 for l in rollup.splitlines() if l.startswith("Pss:")), int(f[21]) * PAGE)
    return int(f[11]), int(f[12]), pss


def children(pid):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                t = (d / "stat").read_text()
            except OSError:
                continue
            if int(t[t.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(d.name))
    return out


def components(state):
    """{name: [pids]} of the cluster's processes, PostgreSQL as its whole process tree."""
    p = state.get("provider", {})
    comps = {}
    for proc in p.get("processes", []):
        # PostgreSQL is counted below, as its postmaster's whole tree.
        if proc.get("pid") and proc["role"] != "postgres":
            comps[f"{proc['role']}-{proc['index']}"] = [proc["pid"]]
    pg = p.get("postgres")
    if pg:
        try:
            master = int(Path(pg["data_dir"], "postmaster.pid").read_text().split()[0])
            comps["postgres"] = [master] + children(master)
        except (OSError, ValueError, IndexError):
            pass
    return comps


def cluster_source(state_file):
    """The local cluster's components, read from its state file each time (agents restart)."""
    def source():
        try:
            comps = components(tomllib.loads(state_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError):
            return {}
        if "postgres" in comps:
            comps["postgres"] = comps["postgres"][:1] + children(comps["postgres"][0])
        return comps
    return source


def pin(name, pids, pinned):
    """`--pin`: servers, PostgreSQL and NATS servers on CPU 0, load generators on CPU 1, every
    thread (`taskset -a`); threads and backends started later inherit it."""
    cpu = "1" if name.startswith(("agent", "client", "publisher")) else "0"
    for p in pids:
        if p not in pinned:
            if subprocess.run(["taskset", "-a", "-cp", cpu, str(p)], capture_output=True).returncode == 0:
                pinned.add(p)


class Sampler(threading.Thread):
    """Every second: each component's processes' CPU ticks; every `PSS_EVERY` seconds their PSS
    (between, a process's last figure), and the process list (PostgreSQL's backends). Reading
    every PSS every second had the sampler at ~20 % of a core in `top` during a full-scale
    ramp-up, on a box whose two cores it shares with what it measures."""

    PSS_EVERY = 5

    def __init__(self, source, pin=False):
        super().__init__(daemon=True)
        self.source = source
        self.pin, self.pinned = pin, set()
        self.samples = []  # (time, {name: {pid: (user, sys, pss)}})
        self.stop = threading.Event()

    def run(self):
        tick, comps, last = 0, {}, {}
        while not self.stop.wait(1.0):
            now = time.time()
            fresh = tick % self.PSS_EVERY == 0
            if fresh:
                comps = self.source()
            tick += 1
            row = {}
            for name, pids in comps.items():
                if self.pin and fresh:
                    pin(name, pids, self.pinned)
                got = {}
                for p in pids:
                    s = stat(p, None if fresh else last.get(p))
                    if s:
                        got[p] = s
                        last[p] = s[2]
                if got:
                    row[name] = got
            row["_box"] = box_ticks()
            self.samples.append((now, row))


def box_ticks():
    """The whole machine's CPU ticks from /proc/stat: (busy, steal, all). Steal is time the
    hypervisor gave this VM's CPUs to someone else: every process here stalls through it."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    steal = f[7] if len(f) > 7 else 0
    total = sum(f[:8])
    return (total - idle - steal, steal, total)


def box_figures(samples, t0, t1):
    """The machine over [t0, t1]: busy cores (every process, the sampler included), the share of
    CPU time stolen by the hypervisor, and the worst second's steal."""
    rows = [s[1]["_box"] for s in samples if t0 <= s[0] <= t1 and "_box" in s[1]]
    if len(rows) < 2:
        return {}
    (b0, s0, a0), (b1, s1, a1) = rows[0], rows[-1]
    worst = max((y[1] - x[1]) / max(y[2] - x[2], 1) for x, y in zip(rows, rows[1:]))
    cores = os.cpu_count() or 1
    return {"busy_cores": (b1 - b0) / max(a1 - a0, 1) * cores,
            "steal_share": (s1 - s0) / max(a1 - a0, 1), "worst_second_steal_share": worst}


def window_figures(samples, t0, t1):
    """Cores (user, kernel) and PSS at the end of [t0, t1] per component. CPU is summed over the
    processes alive at both ends (PostgreSQL's backends come and go; one that started inside the
    window counts from its start), memory over those alive at the end."""
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2:
        return {}
    (a_t, a), (b_t, b) = inside[0], inside[-1]
    secs = b_t - a_t
    out = {}
    for name in sorted(n for n in b if not n.startswith("_")):
        before = a.get(name, {})
        if not before:
            continue
        def delta(i):
            return sum(v[i] - before.get(pid, (0, 0, 0))[i] for pid, v in b[name].items())
        out[name] = {
            "user_cores": delta(0) / TICK / secs,
            "sys_cores": delta(1) / TICK / secs,
            "rss_mib": sum(v[2] for v in b[name].values()) / 2**20,
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="third")
    ap.add_argument("--append", metavar="FILE", help="append the result tables to FILE (e.g. BENCHMARKS.md)")
    ap.add_argument("--keep", action="store_true", help="leave the cluster and its LTOPS_HOME")
    ap.add_argument("--save", metavar="DIR", type=Path,
                    help="copy the run's results (agents' and server's JSON Lines) to DIR/RUN before deleting")
    ap.add_argument("--no-nats", dest="nats", action="store_false",
                    help="skip the same shape on a two-server nats-server cluster after the F1 run")
    ap.add_argument("--nats-only", action="store_true", help="run only the NATS shape")
    ap.add_argument("--nats-arrivals", choices=["poisson", "periodic"], default="poisson",
                    help="how the NATS shape's publisher spaces messages (poisson: as the agents' posts)")
    ap.add_argument("--pin", action="store_true",
                    help="servers, PostgreSQL and nats-server on CPU 0; agents and NATS clients on CPU 1")
    ap.add_argument("--bin-dir", metavar="DIR", type=Path,
                    help="run chat-server and loadtest-agent from DIR (another commit's release build, "
                         "side by side with this one); ltops, ltparse and nats-fanout stay this checkout's")
    ap.add_argument("--perf", metavar="DIR",
                    help="profile server-0 and agent-0 (perf record -e cpu-clock) for 30 s of the steady window")
    ap.add_argument("--seed", type=int, default=1,
                    help="the run's seed: when the agents post and the anchor publishes (default 1)")
    a = ap.parse_args()
    if not 0 <= a.seed < 2**63:
        ap.error("--seed: a whole number from 0 to 2^63 - 1")
    users, channels, pps, ramp, duration = SCALES[a.scale]

    if a.bin_dir:
        for b in ("chat-server", "loadtest-agent"):
            if not (a.bin_dir / b).is_file():
                sys.exit(f"f1.py: --bin-dir {a.bin_dir}: no {b} there "
                         "(build it with cargo build --release in that checkout)")
    run(["cargo", "build", "--release", "--locked", "-p", "chat-server", "-p", "loadtest-agent", "-p", "ltparse",
         "-p", "nats-fanout"], cwd=ROOT)
    rel = ROOT / "target/release"
    bins = a.bin_dir or rel
    fig = None if a.nats_only else f1_run(a, rel, bins)
    if fig:
        print(json.dumps(fig, indent=2))
    nats = nats_run(users, channels, pps, NATS_SECS[a.scale], a.pin, rel, a.nats_arrivals, a.seed) if a.nats or a.nats_only else None
    if nats:
        print(json.dumps(nats, indent=2))
    if a.append:
        with open(a.append, "a") as f:
            f.write(heading(a))
            if fig:
                f.write(table(fig))
            if nats:
                f.write(nats_table(nats, fig))


def heading(a):
    flags = "".join([" --pin" if a.pin else "", "" if a.nats else " --no-nats", " --nats-only" if a.nats_only else "",
                     f" --nats-arrivals {a.nats_arrivals}" if a.nats_arrivals != "poisson" else "",
                     f" --bin-dir {a.bin_dir}" if a.bin_dir else "", f" --seed {a.seed}" if a.seed != 1 else ""])
    return (f"\n### F1 ({a.scale}: {SCALES[a.scale][0]:,} users){', pinned' if a.pin else ''}, "
            f"{time.strftime('%Y-%m-%d')}, `python3 bench/f1.py --scale {a.scale}{flags}`\n")


def f1_run(a, rel, bins):
    users, channels, pps, ramp, duration = SCALES[a.scale]
    # The orchestrator's speed does not matter here: whichever profile is built (release after
    # the README's first command, debug after the tests).
    ltops = next((p for p in (rel / "ltops", ROOT / "target/debug/ltops") if p.exists()),
                 ROOT / "target/debug/ltops")
    if not ltops.exists():
        # The orchestrator's speed does not matter here; the test build makes this one too.
        run(["cargo", "build", "--locked", "-p", "ltops", "--bin", "ltops"], cwd=ROOT)
    home = Path(tempfile.mkdtemp(prefix="ltops-f1-"))
    env = dict(os.environ, LTOPS_HOME=str(home))
    cfg = home / "f1.toml"
    cfg.write_text(WORKLOAD.format(users=users, channels=channels, pps=pps, ramp=ramp, duration=duration,
                                   seed=a.seed))
    name = "f1"
    try:
        run([ltops, "create", "--name", name, "--agents", "2", "--database", "postgres", "--app-count", "2"], env=env)
        run([ltops, "deploy", "-c", name, "--server", bins / "chat-server", "--agent", bins / "loadtest-agent"], env=env)
        source = cluster_source(home / "clusters" / name / "cluster.toml")
        sampler = Sampler(source, pin=a.pin)
        sampler.start()
        started = time.time()
        lt = subprocess.Popen([ltops, "loadtest", "-c", name, "--config", cfg, "--progress", "plain",
                               "--server", bins / "chat-server", "--agent", bins / "loadtest-agent"],
                              env=env, stderr=subprocess.PIPE, text=True)
        profiler = None
        for line in lt.stderr:
            sys.stderr.write(line)
            if line.startswith("run: ") and a.perf and not profiler:
                # The steady window starts 30 s after the ramp-up; profile 30 s inside it.
                at = time.time() + humantime_s(ramp) + 40
                profiler = threading.Thread(target=profile, args=(Path(a.perf), source, at, 30), daemon=True)
                profiler.start()
        lt.wait()
        if profiler:
            profiler.join()
        sampler.stop.set()
        sampler.join()
        state = tomllib.loads((home / "clusters" / name / "cluster.toml").read_text())
        results = Path(state["last_run"]["results_dir"])
        if a.save:
            shutil.copytree(results, a.save / results.name, dirs_exist_ok=True)
            print(f"results saved in {a.save / results.name}", file=sys.stderr)
        files = sorted(str(p) for p in results.glob("agent-*.jsonl"))
        args = [x for f in files for x in ("-f", f)]
        rep = json.loads(subprocess.run([rel / "ltparse", "results", "--display", "json", "-v", *args],
                                        check=False, capture_output=True, text=True).stdout)
        r = rep["runs"][0] if "runs" in rep else rep
        start = (r.get("started_at_ms") or started * 1000) / 1000
        ivs = r.get("intervals", [])
        full = [i for i in ivs if i["active_users"] >= users * 0.999]
        # No steady window when the run never held every user (cut short, or the ramp-up did not
        # finish): the figures are then over the whole run, and the table says so.
        steady_from = full[0]["offset_s"] + 30 if full else 0
        steady = [i for i in ivs if i["offset_s"] >= steady_from]
        t0, t1 = start + steady_from, start + (ivs[-1]["offset_s"] + ivs[-1]["length_s"] if ivs else 0)
        comps = window_figures(sampler.samples, t0, t1)
        secs = sum(i["length_s"] for i in steady) or 1
        p99s = [i["delivery_latency"]["p99_us"] / 1000 for i in steady if i["delivery_latency"]["count"]]
        return {
            "scale": a.scale, "users": users, "held": r["peak_active_users"], "errors": r["totals"]["errors"],
            "deliveries_per_s_steady": sum(i["deliveries_received"] for i in steady) / secs,
            "delivery_p99_ms_run": r["delivery"]["latency"]["p99_us"] / 1000,
            "delivery_p99_ms_steady_intervals": [min(p99s, default=0), max(p99s, default=0)],
            "steady_p99_spread": interval_spread([[0, 0, p] for p in p99s]),
            "missing": r["delivery"]["missing"], "expected": r["delivery"]["expected"],
            "late_ratio": r["schedule"]["late_ratio"], "loadtest_exit": lt.returncode,
            "steady_s": t1 - t0, "components": comps, "box": box_figures(sampler.samples, t0, t1),
            "reached_full": bool(full),
            "cut_short": r.get("cut_short", lt.returncode != 0),
            "p99_ms_per_interval": [[i["offset_s"], i["active_users"], i["delivery_latency"]["p99_us"] / 1000]
                                    for i in ivs if i["delivery_latency"]["count"]],
        }
    finally:
        if not a.keep:
            subprocess.run([ltops, "delete", name, "--yes"], env=env, check=False)
            subprocess.run(["rm", "-rf", str(home)], check=False)


def humantime_s(text):
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]]


def profile(outdir, source, at, secs):
    """`perf record -e cpu-clock` (the only clock this machine's perf has) on server-0 and
    agent-0 for `secs` from `at`, then each profile's symbols by share, in OUTDIR/NAME.txt."""
    outdir.mkdir(parents=True, exist_ok=True)
    time.sleep(max(0, at - time.time()))
    comps = source()
    procs = []
    for name in ("server-0", "agent-0"):
        if name in comps:
            data = outdir / f"{name}.data"
            procs.append((name, data, subprocess.Popen(
                ["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(comps[name][0]),
                 "-o", str(data), "--", "sleep", str(secs)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    for name, data, p in procs:
        p.wait()
        with open(outdir / f"{name}.txt", "w") as out:
            subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
                            "--sort", "dso,symbol", "--percent-limit", "0.5"], stdout=out, stderr=subprocess.DEVNULL)
        print(f"profile: {outdir / (name + '.txt')}", flush=True)


# Seconds of NATS publishing per scale: CPU and latency are rates, so a shorter window suffices.
# Publishing time of the NATS shape: about as long as the F1 run's steady window (full: 270 s;
# third: 70 to 80 s), so about as many whole intervals.
NATS_SECS = {"full": 270, "third": 80}


def raise_nofile():
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def logged(log, marker, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            for l in log.read_text().splitlines():
                if marker in l:
                    return l.rsplit(" ", 1)[-1].replace("nats://", "")
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nats-server did not log {marker!r} within {timeout} s; see {log}")


def nats_run(users, channels, pps, secs, pin_cpus, rel, arrivals="poisson", seed=1):
    """The F1 shape on NATS: two nats-server instances joined by a route (one instance cannot
    hold 30,000 sockets under the 20,000 open-file limit, and the F1 cluster has two chat-server
    instances and a bus), `users` subscriber connections in two `nats-fanout` processes (half
    on each server), `channels` subjects of 2,000, one publisher at `pps` on the first server,
    its messages as a Poisson stream as the agents' posts are (`arrivals`). Samples the same way;
    the window is the publishing time. Latency per 10 s interval is the two clients' counts
    merged, over the intervals wholly inside the publishing time."""
    if not shutil.which("nats-server"):
        raise SystemExit("nats-server is not installed: apt-get install nats-server (or pass --no-nats)")
    tmp = Path(tempfile.mkdtemp(prefix="f1-nats-"))
    procs = []
    try:
        def server(name, routes=None):
            log = tmp / f"{name}.log"
            cmd = ["nats-server", "-a", "127.0.0.1", "-p", "-1", "--cluster_name", "f1",
                   "--cluster", "nats://127.0.0.1:-1", "--log", str(log)]
            if routes:
                cmd += ["--routes", f"nats://{routes}"]
            p = subprocess.Popen(cmd, preexec_fn=raise_nofile, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            return p, log
        na, la = server("nats-0")
        a_client, a_route = logged(la, "Listening for client connections on"), logged(la, "Listening for route connections on")
        nb, lb = server("nats-1", a_route)
        b_client = logged(lb, "Listening for client connections on")
        logged(lb, "Route connection created")
        servers = f"{a_client},{b_client}"
        fanout = rel / "nats-fanout"
        half = users // 2
        clients = []
        for k, (first, n) in enumerate([(0, half), (half, users - half)]):
            p = subprocess.Popen([fanout, "--servers", servers, "--subscribers", str(n), "--first", str(first),
                                  "--members", "2000", "--subjects", str(channels), "--payload", str(NATS_PAYLOAD),
                                  "--listen", f"{secs + 60}s", "--connect-timeout", "180s"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            clients.append(p)
        for p in clients:
            line = p.stderr.readline()
            if not line.startswith("ready"):
                raise SystemExit(f"nats-fanout did not get ready: {line}{p.stderr.read()}")
        pub = subprocess.Popen([fanout, "--servers", servers, "--subjects", str(channels), "--members", "2000",
                                "--rate", str(pps), "--arrivals", arrivals, "--seed", str(seed),
                                "--payload", str(NATS_PAYLOAD), "--settle", "3s",
                                "--publish", f"{secs}s", "--listen", "0s"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(pub)
        comps = {"nats-0": [na.pid], "nats-1": [nb.pid], "client-0": [clients[0].pid],
                 "client-1": [clients[1].pid], "publisher": [pub.pid]}
        sampler = Sampler(lambda: comps, pin=pin_cpus)
        sampler.start()
        t0 = time.time() + 3
        out, err = pub.communicate(timeout=secs + 120)
        t1 = time.time()
        if pub.returncode != 0:
            raise SystemExit(f"nats-fanout publisher failed: {err}")
        published = json.loads(out)
        reports = []
        for p in clients:
            o, e = p.communicate(timeout=secs + 180)
            if p.returncode != 0:
                raise SystemExit(f"nats-fanout subscriber failed: {e}")
            reports.append(json.loads(o))
        sampler.stop.set()
        sampler.join()
        comp = window_figures(sampler.samples, t0, t1)
        received = sum(r["received"] for r in reports)
        p0 = published["publish_start_unix_ms"] / 1000
        ivs = merged_intervals(reports, p0, p0 + published["publish_secs"])
        return {
            "arrivals": arrivals, "p99_ms_merged": merged_quantile(reports, 0.99) / 1000,
            "p99_ms_per_interval": ivs,
            "users": users, "connections": sum(r["subscribers"] for r in reports),
            "published": sum(published["published"]), "published_late": published["published_late"],
            "expected": sum(published["published"]) * 2000, "received": received,
            "deliveries_per_s": received / published["publish_secs"],
            "p50_ms": max(r["latency_p50_us"] for r in reports) / 1000,
            "p99_ms": max(r["latency_p99_us"] for r in reports) / 1000,
            "max_ms": max(r["latency_max_us"] for r in reports) / 1000,
            "closed": sum(r["closed"] for r in reports), "secs": t1 - t0, "components": comp,
            "box": box_figures(sampler.samples, t0, t1), "payload": NATS_PAYLOAD,
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def merged_quantile(reports, q, only=None):
    """The `q` quantile of the clients' per-interval counts summed (`only`: interval starts)."""
    counts = {}
    for r in reports:
        for iv in r["intervals"]:
            if only is None or iv["start_unix_s"] in only:
                for v, n in iv["counts"]:
                    counts[v] = counts.get(v, 0) + n
    total = sum(counts.values())
    if not total:
        return 0
    want, seen = q * total, 0
    for v in sorted(counts):
        seen += counts[v]
        if seen >= want:
            return v
    return max(counts)


def merged_intervals(reports, t0, t1):
    """[[start offset s, received, p99 ms]] of every interval wholly inside [t0, t1] (Unix s)."""
    length = reports[0]["interval_secs"]
    starts = sorted({iv["start_unix_s"] for r in reports for iv in r["intervals"]
                     if iv["start_unix_s"] >= t0 and iv["start_unix_s"] + length <= t1})
    return [[s - starts[0], sum(iv["received"] for r in reports for iv in r["intervals"] if iv["start_unix_s"] == s),
             merged_quantile(reports, 0.99, {s}) / 1000] for s in starts]


# Bytes per NATS message: about one `posted` WebSocket frame of the F1 workload (its post, as
# JSON inside the event's JSON, with the channel's names and the sender).
NATS_PAYLOAD = 1000


def per_million(comps, prefix, deliveries_per_s):
    """CPU-seconds the components named `prefix*` spend per million deliveries."""
    cores = sum(v["user_cores"] + v["sys_cores"] for k, v in comps.items() if k.startswith(prefix))
    return cores / max(deliveries_per_s, 1e-9) * 1e6


def table(fig):
    c = fig["components"]
    servers = [v for k, v in c.items() if k.startswith("server")]
    agents = [v for k, v in c.items() if k.startswith("agent")]
    per_conn = sum(s["rss_mib"] for s in servers) * 1024 / max(fig["held"], 1)
    per_user = sum(s["rss_mib"] for s in agents) * 1024 / max(fig["held"], 1)
    cpu_all = sum(v["user_cores"] + v["sys_cores"] for v in c.values())
    dps = fig["deliveries_per_s_steady"]
    window = "steady window" if fig.get("reached_full", True) else "whole run"
    lines = [
        "" if fig.get("reached_full", True) else
        f"\n**The run never held all {fig['users']:,} users** (loadtest exit {fig['loadtest_exit']}): "
        "every figure below is over the whole run, not a steady window.\n",
        "\n| figure | measured |\n|---|---|\n",
        f"| users held / errors | {fig['held']:,} / {fig['errors']:,} |\n",
        f"| deliveries per second, {window} | {dps:,.0f} |\n",
        f"| delivery p99 per 10 s interval, {window}: lowest / median / highest | {fig['steady_p99_spread']} |\n",
        f"| delivery p99 over the run | {fig['delivery_p99_ms_run']:,.0f} ms |\n",
        f"| missing deliveries | {fig['missing']:,} of {fig['expected']:,} |\n",
        f"| actions started late | {fig['late_ratio'] * 100:.2f} % |\n",
        f"| server memory per connection, steady (all instances / users) | {per_conn:.1f} KiB |\n",
        f"| agent memory per user, steady (all agents / users) | {per_user:.1f} KiB |\n",
        f"| CPU, whole cluster, steady | {cpu_all:.2f} of {os.cpu_count()} cores |\n",
        f"| servers' CPU-seconds per million deliveries (all their work) | {per_million(c, 'server', dps):.1f} |\n\n",
        f"Per component over the {window} ({fig['steady_s']:.0f} s): CPU in cores (user and kernel time), memory (PSS) at its end.\n\n",
        "| component | user | kernel | memory |\n|---|--:|--:|--:|\n",
    ]
    for k, v in c.items():
        lines.append(f"| {k} | {v['user_cores']:.2f} | {v['sys_cores']:.2f} | {v['rss_mib']:.0f} MiB |\n")
    tot_u = sum(v["user_cores"] for v in c.values())
    tot_s = sum(v["sys_cores"] for v in c.values())
    lines.append(f"| all | {tot_u:.2f} | {tot_s:.2f} | |\n")
    ivs = fig.get("p99_ms_per_interval", [])
    if ivs:
        lines.append("\nDelivery p99 per interval (offset s: ms; users): "
                     + ", ".join(f"{o}: {p:,.0f} ({u:,})" for o, u, p in ivs) + "\n")
    return "".join(lines)


def nats_table(n, fig):
    """The NATS shape beside the F1 run, per delivery where the sizes differ."""
    c = n["components"]
    dps = n["deliveries_per_s"]
    def mem(prefix, count):
        return sum(v["rss_mib"] for k, v in c.items() if k.startswith(prefix)) * 1024 / max(count, 1)
    def cores(prefix, key):
        return sum(v[key] for k, v in c.items() if k.startswith(prefix))
    rows = [
        ("connections (subscribers)", f"{n['connections']:,}"),
        ("deliveries per second", f"{dps:,.0f}"),
        ("delivery p99 over the run (both clients merged)", f"{n['p99_ms_merged']:.1f} ms"),
        ("delivery p99 per 10 s interval: lowest / median / highest", interval_spread(n["p99_ms_per_interval"])),
        ("delivery p50 / p99 / max, the worse client", f"{n['p50_ms']:.1f} / {n['p99_ms']:.1f} / {n['max_ms']:.0f} ms"),
        ("missing deliveries", f"{n['expected'] - n['received']:,} of {n['expected']:,}"),
        ("messages published late (> 10 ms)", f"{n['published_late']:,} of {n['published']:,}"),
        ("servers' CPU, user / kernel", f"{cores('nats', 'user_cores'):.2f} / {cores('nats', 'sys_cores'):.2f} cores"),
        ("servers' CPU-seconds per million deliveries", f"{per_million(c, 'nats', dps):.1f}"),
        ("server memory per connection", f"{mem('nats', n['connections']):.1f} KiB"),
        ("clients' CPU, user / kernel", f"{cores('client', 'user_cores'):.2f} / {cores('client', 'sys_cores'):.2f} cores"),
        ("client memory per connection", f"{mem('client', n['connections']):.1f} KiB"),
    ]
    out = [f"\nThe same shape on NATS, in the same run: two `nats-server` {nats_version()} instances joined by a route, "
           f"{n['connections']:,} subscriber connections from two `nats-fanout` processes, one publisher, "
           f"{n['payload']:,}-byte messages published as a {n['arrivals']} stream, {n['secs']:.0f} s of publishing.\n\n"]
    if fig:
        fc = fig["components"]
        fdps = fig["deliveries_per_s_steady"]
        ratio = per_million(fc, "server", fdps) / max(per_million(c, "nats", dps), 1e-9)
        out.append(f"chat-server's CPU per delivery is **{ratio:.2f}×** nats-server's "
                   f"({per_million(fc, 'server', fdps):.1f} against {per_million(c, 'nats', dps):.1f} CPU-seconds per million; "
                   "chat-server's figure includes every API request the agents make).\n\n")
    out.append("| figure (NATS) | measured |\n|---|---|\n")
    out += [f"| {k} | {v} |\n" for k, v in rows]
    out.append("\n| component | user | kernel | memory |\n|---|--:|--:|--:|\n")
    for k, v in c.items():
        out.append(f"| {k} | {v['user_cores']:.2f} | {v['sys_cores']:.2f} | {v['rss_mib']:.0f} MiB |\n")
    return "".join(out)


def interval_spread(ivs):
    """'lowest / median / highest ms (k of n over 50 ms)' of [[offset, received, p99 ms]]."""
    if not ivs:
        return "no whole interval"
    p = sorted(x[2] for x in ivs)
    over = sum(1 for x in p if x > 50)
    return f"{p[0]:.1f} / {p[len(p) // 2]:.1f} / {p[-1]:.1f} ms ({over} of {len(p)} over 50 ms)"


def nats_version():
    try:
        return subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip().split()[-1]
    except (OSError, IndexError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
