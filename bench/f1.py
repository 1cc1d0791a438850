#!/usr/bin/env python3
"""The headline workload (issue 13, "F1") on a local cluster, measured per component.

    python3 bench/f1.py [--scale third|full] [--append BENCHMARKS.md] [--keep]

Builds the release `chat-server`, `loadtest-agent` and `ltparse` (`ltops` is the debug one the
test build makes, built if missing), creates a local
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
(`--keep` leaves it and the home).
"""
import argparse
import json
import os
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
"""


def run(cmd, **kw):
    print("$", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def stat(pid):
    """(user ticks, system ticks, memory bytes) of one process, or None when it is gone. Memory
    is the proportional set size (PSS): pages shared between processes (PostgreSQL's shared
    buffers, in every backend) count once in all, not once per process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    f = text[text.rindex(")") + 2:].split()
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


class Sampler(threading.Thread):
    def __init__(self, state_file):
        super().__init__(daemon=True)
        self.state_file = state_file
        self.samples = []  # (time, {name: (user, sys, rss)})
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(1.0):
            try:
                comps = components(tomllib.loads(self.state_file.read_text()))
            except (OSError, tomllib.TOMLDecodeError):
                continue
            now = time.time()
            row = {}
            for name, pids in comps.items():
                if name == "postgres":
                    pids = pids[:1] + children(pids[0])
                got = [s for s in (stat(p) for p in pids) if s]
                if got:
                    row[name] = tuple(sum(x[i] for x in got) for i in range(3))
            self.samples.append((now, row))


def window_figures(samples, t0, t1):
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2:
        return {}
    (a_t, a), (b_t, b) = inside[0], inside[-1]
    secs = b_t - a_t
    out = {}
    for name in sorted(b):
        if name in a:
            out[name] = {
                "user_cores": (b[name][0] - a[name][0]) / TICK / secs,
                "sys_cores": (b[name][1] - a[name][1]) / TICK / secs,
                "rss_mib": b[name][2] / 2**20,
            }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="third")
    ap.add_argument("--append", metavar="FILE", help="append the result table to FILE (e.g. BENCHMARKS.md)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    users, channels, pps, ramp, duration = SCALES[a.scale]

    run(["cargo", "build", "--release", "--locked", "-p", "chat-server", "-p", "loadtest-agent", "-p", "ltparse"], cwd=ROOT)
    rel, ltops = ROOT / "target/release", ROOT / "target/debug/ltops"
    if not ltops.exists():
        # The orchestrator's speed does not matter here; the test build makes this one too.
        run(["cargo", "build", "--locked", "-p", "ltops", "--bin", "ltops"], cwd=ROOT)
    home = Path(tempfile.mkdtemp(prefix="ltops-f1-"))
    env = dict(os.environ, LTOPS_HOME=str(home))
    cfg = home / "f1.toml"
    cfg.write_text(WORKLOAD.format(users=users, channels=channels, pps=pps, ramp=ramp, duration=duration))
    name = "f1"
    try:
        run([ltops, "create", "--name", name, "--agents", "2", "--database", "postgres", "--app-count", "2"], env=env)
        run([ltops, "deploy", "-c", name, "--server", rel / "chat-server", "--agent", rel / "loadtest-agent"], env=env)
        sampler = Sampler(home / "clusters" / name / "cluster.toml")
        sampler.start()
        started = time.time()
        lt = subprocess.run([ltops, "loadtest", "-c", name, "--config", cfg, "--progress", "plain",
                             "--server", rel / "chat-server", "--agent", rel / "loadtest-agent"], env=env)
        sampler.stop.set()
        sampler.join()
        state = tomllib.loads((home / "clusters" / name / "cluster.toml").read_text())
        results = Path(state["last_run"]["results_dir"])
        files = sorted(str(p) for p in results.glob("agent-*.jsonl"))
        args = [x for f in files for x in ("-f", f)]
        rep = json.loads(subprocess.run([rel / "ltparse", "results", "--display", "json", "-v", *args],
                                        check=False, capture_output=True, text=True).stdout)
        r = rep["runs"][0] if "runs" in rep else rep
        start = (r.get("started_at_ms") or started * 1000) / 1000
        ivs = r.get("intervals", [])
        full = [i for i in ivs if i["active_users"] >= users * 0.999]
        steady_from = full[0]["offset_s"] + 30 if full else 0
        steady = [i for i in ivs if i["offset_s"] >= steady_from]
        t0, t1 = start + steady_from, start + (ivs[-1]["offset_s"] + ivs[-1]["length_s"] if ivs else 0)
        comps = window_figures(sampler.samples, t0, t1)
        secs = sum(i["length_s"] for i in steady) or 1
        p99s = [i["delivery_latency"]["p99_us"] / 1000 for i in steady if i["delivery_latency"]["count"]]
        fig = {
            "scale": a.scale, "users": users, "held": r["peak_active_users"], "errors": r["totals"]["errors"],
            "deliveries_per_s_steady": sum(i["deliveries_received"] for i in steady) / secs,
            "delivery_p99_ms_run": r["delivery"]["latency"]["p99_us"] / 1000,
            "delivery_p99_ms_steady_intervals": [min(p99s, default=0), max(p99s, default=0)],
            "missing": r["delivery"]["missing"], "expected": r["delivery"]["expected"],
            "late_ratio": r["schedule"]["late_ratio"], "loadtest_exit": lt.returncode,
            "steady_s": t1 - t0, "components": comps,
        }
        print(json.dumps(fig, indent=2))
        if a.append:
            with open(a.append, "a") as f:
                f.write(table(fig))
    finally:
        if not a.keep:
            subprocess.run([ltops, "delete", name, "--yes"], env=env, check=False)
            subprocess.run(["rm", "-rf", str(home)], check=False)


def table(fig):
    c = fig["components"]
    servers = [v for k, v in c.items() if k.startswith("server")]
    agents = [v for k, v in c.items() if k.startswith("agent")]
    per_conn = sum(s["rss_mib"] for s in servers) * 1024 / max(fig["held"], 1)
    per_user = sum(s["rss_mib"] for s in agents) * 1024 / max(fig["held"], 1)
    cpu_all = sum(v["user_cores"] + v["sys_cores"] for v in c.values())
    lines = [
        f"\n### F1 ({fig['scale']}: {fig['users']:,} users), {time.strftime('%Y-%m-%d')}, `python3 bench/f1.py --scale {fig['scale']}`\n\n",
        "| figure | measured |\n|---|---|\n",
        f"| users held / errors | {fig['held']:,} / {fig['errors']:,} |\n",
        f"| deliveries per second, steady | {fig['deliveries_per_s_steady']:,.0f} |\n",
        f"| delivery p99 per 10 s interval, steady | {fig['delivery_p99_ms_steady_intervals'][0]:,.0f}–{fig['delivery_p99_ms_steady_intervals'][1]:,.0f} ms |\n",
        f"| delivery p99 over the run | {fig['delivery_p99_ms_run']:,.0f} ms |\n",
        f"| missing deliveries | {fig['missing']:,} of {fig['expected']:,} |\n",
        f"| actions started late | {fig['late_ratio'] * 100:.2f} % |\n",
        f"| server memory per connection, steady (all instances / users) | {per_conn:.1f} KiB |\n",
        f"| agent memory per user, steady (all agents / users) | {per_user:.1f} KiB |\n",
        f"| CPU, whole cluster, steady | {cpu_all:.2f} of {os.cpu_count()} cores |\n\n",
        f"Per component over the steady window ({fig['steady_s']:.0f} s): CPU in cores (user and kernel time), memory (PSS) at its end.\n\n",
        "| component | user | kernel | memory |\n|---|--:|--:|--:|\n",
    ]
    for k, v in c.items():
        lines.append(f"| {k} | {v['user_cores']:.2f} | {v['sys_cores']:.2f} | {v['rss_mib']:.0f} MiB |\n")
    tot_u = sum(v["user_cores"] for v in c.values())
    tot_s = sum(v["sys_cores"] for v in c.values())
    lines.append(f"| all | {tot_u:.2f} | {tot_s:.2f} | |\n")
    return "".join(lines)


if __name__ == "__main__":
    sys.exit(main())
