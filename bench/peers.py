#!/usr/bin/env python3
"""The load generator's own cost, side by side with wrk and Locust (issue 13).

    python3 bench/peers.py [--seconds 20] [--rounds 3] [--append BENCHMARKS.md] [--locust PATH]
                           [--perf DIR] [--bin-dir DIR] [--also LABEL=AGENT_BINARY ...]
                           [--only check_unreads|read_mix|users ...]

Builds the release `chat-server` and `loadtest-agent`, starts one chat-server on 127.0.0.1 with
a fresh SQLite data directory, creates a data set (1,000 users, 50 channels of 20 members, 30
posts each, so a posts page is a real page), and then runs each generator in turn against that
same server, one at a time:

1. check-unreads GET over 50 connections: `wrk -t1 -c50` (Debian package; a Lua script adds the
   bearer token) against `loadtest-agent run` with 50 users whose only action is check_unreads,
   1 ms apart (each user keeps one request in flight, as a wrk connection does).
2. the agent's read mix, a posts page then a view (switch_channel): wrk replaying the same two
   requests in Lua against the agent with switch_channel only.
3. 1,000 users acting once every 5 s (check_unreads): Locust (`FastHttpUser`, headless) against
   the agent, each user logged in once; the agent's users also hold a WebSocket each, Locust's
   none. Beside them `wrk` with a Lua `delay` of 5 s on 1,000 connections sends the same paced
   requests from a C event loop, simulating nothing: what the kernel and the loopback cost any
   generator at that rate on this machine, the floor for the ratio to Locust. Memory per user is
   given whole (the process's RSS over its users, fixed part included) and marginal (the RSS of
   1,000 users less that of 500, over 500), for Locust and the agent alike.

Figures: generator CPU (user + kernel, from the process's rusage for 1 and 2, from /proc over
the steady window for 3) per request or per user-minute, and memory per user (VmRSS at the end
of the window). The ratio is agent / peer. Secrets (the token, the password) go into 0600 files
in the temporary directory, never on a command line. Everything is on loopback and every run is
bounded by --seconds.

This machine's CPU figures drift by tens of percent from minute to minute, as much for wrk as
for the agent, so each figure is measured `--rounds` times (default 3), the generators taking
turns within a round in an order that rotates from round to round. The table gives each
generator's median and the ratio of the medians, with the range of the rounds' own ratios.
`--also LABEL=PATH` measures another agent binary in the same rounds (a before/after on one
machine, one server); `--bin-dir DIR` runs another build's `chat-server` and `loadtest-agent`
instead of building this checkout's.

Every agent runs its users on `--agent-threads` load threads (default 1: wrk runs `-t1`, Locust is
one Python process), set through `LOADTEST_AGENT_THREADS` and, for builds from before that
setting, `TOKIO_WORKER_THREADS` (the work-stealing runtime's worker count).
"""
import argparse
import json
import os
import re
import statistics
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
USERS = 1000
# The agents' environment: their load threads (main() sets them from --agent-threads).
AGENT_ENV = dict(os.environ)
# The smaller run of the marginal memory figure.
HALF = 500
PASSWORD = "Lt-Passw0rd!"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret_file(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def api(base, method, path, token=None, body=None):
    req = urllib.request.Request(base + "/api/v4" + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers.get("Token"), json.loads(r.read() or b"null")


def cpu_ticks(pid):
    f = Path(f"/proc/{pid}/stat").read_text()
    f = f[f.rindex(")") + 2:].split()
    return int(f[11]) + int(f[12])


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Cpu(float):
    """CPU seconds, user + kernel time, that also keeps the two apart."""

    def __new__(cls, user, kernel):
        c = super().__new__(cls, user + kernel)
        c.user, c.kernel = user, kernel
        return c


def run_rusage(cmd, on_start=None, **kw):
    """Runs `cmd` to its end: (stdout, stderr, CPU seconds user + kernel, a `Cpu`). `on_start(pid)` runs
    beside it (the profiler)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if on_start:
        threading.Thread(target=on_start, args=(p.pid,), daemon=True).start()
    # communicate() would reap the child itself; wait4 keeps its rusage.
    bufs = {}

    def drain(name, stream):
        bufs[name] = stream.read()
    ts = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", p.stdout), ("err", p.stderr))]
    for t in ts:
        t.start()
    _, status, ru = os.wait4(p.pid, 0)
    for t in ts:
        t.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{Path(str(cmd[0])).name} failed (exit {p.returncode}):\n{bufs.get('err', '')[-3000:]}")
    return bufs.get("out", ""), bufs.get("err", ""), Cpu(ru.ru_utime, ru.ru_stime)


def workload(port, users, mix, interval, jitter, seconds, ramp):
    return f"""# Generated by bench/peers.py.
[target]
url = "http://127.0.0.1:{port}"
admin_password = "Lt-Admin-Passw0rd!"
request_timeout = "30s"

[dataset]
teams = 1
users = {USERS}
posts_per_channel = 30

[[dataset.channels]]
count = 50
members = 20

[users]
count = {users}
ramp_up = "{ramp}s"
duration = "{seconds + ramp}s"

[behaviour]
mode = "closed"
mean_interval = "{interval}"
interval_jitter = "{jitter}"

[behaviour.mix]
{mix} = 1

[run]
interval = "5s"
"""


def agent_hits(results):
    """Successful and failed actions of one agent results file, by action."""
    summary = None
    for line in Path(results).read_text().splitlines():
        if '"totals"' in line:
            summary = json.loads(line)
    if summary is None:
        sys.exit(f"{results}: no summary record (the agent did not finish)")
    out = {}
    for name, a in summary["totals"]["actions"].items():
        errors = sum(v for v in a.get("errors", {}).values() if isinstance(v, int))
        out[name] = (a["ok"], errors)
    return out


class Bench:
    def __init__(self, a, tmp, rel):
        self.a, self.tmp, self.rel = a, tmp, rel
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = None
        # Figure name -> (unit, peer name, {generator: [value per round]}, [note per round]).
        self.figures = {}
        # The agents measured: (label, binary); the first is "agent".
        self.agents = [("agent", rel / "loadtest-agent")] + list(a.also)
        self.round = 0

    def sample(self, figure, unit, peer, who, value, note=None):
        f = self.figures.setdefault(figure, (unit, peer, {}, []))
        f[2].setdefault(who, []).append(value)
        if note:
            f[3].append(note)

    def turns(self, runs):
        """Runs `runs` (callables) in an order rotated by the round number."""
        k = self.round % len(runs)
        for run in runs[k:] + runs[:k]:
            run()

    def start_server(self):
        log = open(self.tmp / "server.log", "a")
        self.server = subprocess.Popen([self.rel / "chat-server", "--listen", f"127.0.0.1:{self.port}",
                                        "--metrics-listen", "off", "--data-dir", self.tmp / "data",
                                        "--log", "warn"], stdout=log, stderr=log)
        for _ in range(200):
            try:
                api(self.base, "GET", "/system/ping")
                return
            except OSError:
                time.sleep(0.05)
        sys.exit(f"chat-server did not answer on {self.base}; see {self.tmp / 'server.log'}")

    def setup(self):
        cfg = self.tmp / "setup.toml"
        cfg.write_text(workload(self.port, USERS, "check_unreads", "5s", "0s", 10, 1))
        print(f"== data set: {USERS} users, 50 channels of 20, 30 posts each", flush=True)
        run_rusage([self.rel / "loadtest-agent", "setup", "--config", cfg, "--concurrency", "32"])
        token, me = api(self.base, "POST", "/users/login", body={"login_id": "lt-user-0", "password": PASSWORD})
        _, teams = api(self.base, "GET", "/users/me/teams", token)
        _, chans = api(self.base, "GET", f"/users/me/teams/{teams[0]['id']}/channels", token)
        self.token, self.user, self.team = token, me["id"], teams[0]["id"]
        # The data set's channels (not the team's default ones), as the agent's users switch between.
        self.channels = [c["id"] for c in chans if c["name"].startswith("lt-team-")]
        if not self.channels:
            sys.exit("lt-user-0 is in none of the data set's channels: the setup did not finish")
        _, page = api(self.base, "GET", f"/channels/{self.channels[0]}/posts?page=0&per_page=30", token)
        self.page_bytes = len(json.dumps(page, separators=(",", ":")))

    def agent(self, binary, name, users, mix, interval, jitter, seconds, ramp=1):
        """Runs an agent binary; (requests by action, CPU seconds over the whole run)."""
        cfg = self.tmp / f"{name}.toml"
        cfg.write_text(workload(self.port, users, mix, interval, jitter, seconds, ramp))
        results = self.tmp / f"{name}.jsonl"
        profile = self.profiler(name, seconds) if binary == self.agents[0][1] and self.round == 0 else None
        _, _, cpu = run_rusage([binary, "run", "--config", cfg, "--skip-setup",
                                "--results", results], on_start=profile, env=AGENT_ENV)
        return agent_hits(results), cpu

    def profiler(self, name, seconds, delay=3):
        """With --perf: `perf record -e cpu-clock` on the agent for the middle of its run, then its
        symbols by share in DIR/agent-NAME.txt (the run's CPU figure then includes perf's cost)."""
        if not self.a.perf:
            return None
        out = Path(self.a.perf)
        out.mkdir(parents=True, exist_ok=True)

        def record(pid):
            time.sleep(delay)
            data = out / f"agent-{name}.data"
            subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384",
                            "-p", str(pid),
                            "-o", data, "--", "sleep", str(max(seconds - 6, 1))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(out / f"agent-{name}.txt", "w") as f:
                subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                                "--sort", "dso,symbol", "--percent-limit", "0.3"],
                               stdout=f, stderr=subprocess.DEVNULL)
        return record

    def wrk(self, name, script, path, seconds):
        lua = secret_file(self.tmp / f"{name}.lua", script)
        out, _, cpu = run_rusage(["wrk", "-t1", "-c50", f"-d{seconds}s", "-s", lua, self.base + path])
        m = re.search(r"(\d+) requests in", out)
        errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if not m:
            sys.exit(f"wrk printed no request count:\n{out}")
        return int(m.group(1)), int(errs.group(1)) if errs else 0, cpu

    def request_rate(self, figure, name, script, path, mix, per_action):
        """wrk running `script` on 50 connections against the agents' 50 users doing only `mix`
        (`per_action` requests each), one after the other: CPU per request of each."""
        s = self.a.seconds

        def per_request(who, cpu, n, note):
            """The CPU per request, and its user and kernel time apart (rows of their own)."""
            self.sample(figure, "µs", "wrk", who, cpu / max(n, 1) * 1e6,
                        f"{note} in {cpu:.2f} CPU-s (user {cpu.user:.2f}, kernel {cpu.kernel:.2f})")
            self.sample(f"{figure}: user time", "µs", "wrk", who, cpu.user / max(n, 1) * 1e6)
            self.sample(f"{figure}: kernel time", "µs", "wrk", who, cpu.kernel / max(n, 1) * 1e6)

        def peer():
            n, bad, cpu = self.wrk(name, script, path, s)
            if bad:
                sys.exit(f"wrk got {bad} non-2xx answers ({name})")
            per_request("wrk", cpu, n, f"wrk {n:,} requests")

        def agent(label, binary):
            hits, cpu = self.agent(binary, name, 50, mix, "1ms", "0ms", s)
            ok, errors = hits.get(mix, (0, 0))
            per_request(label, cpu, per_action * ok,
                        f"{label} {per_action * ok:,} requests ({errors} failed actions)")
        self.turns([peer] + [lambda a=a: agent(*a) for a in self.agents])

    def check_unreads(self):
        self.request_rate("generator CPU per request, check-unreads GET, 50 connections", "unreads",
                          f'wrk.headers["Authorization"] = "Bearer {self.token}"\n',
                          f"/api/v4/users/{self.user}/teams/{self.team}/channels/members", "check_unreads", 1)

    def read_mix(self):
        chans = ", ".join(f'"{c}"' for c in self.channels)
        script = f"""-- The agent's switch_channel: a posts page, then a view of that channel.
wrk.headers["Authorization"] = "Bearer {self.token}"
wrk.headers["Content-Type"] = "application/json"
local channels = {{{chans}}}
local n = 0
request = function()
  n = n + 1
  local ch = channels[(math.floor(n / 2) % #channels) + 1]
  if n % 2 == 1 then
    return wrk.format("GET", "/api/v4/channels/" .. ch .. "/posts?page=0&per_page=30")
  end
  return wrk.format("POST", "/api/v4/channels/members/{self.user}/view", nil,
    '{{"channel_id":"' .. ch .. '","prev_channel_id":""}}')
end
"""
        figure = "generator CPU per request, the agent's read mix (posts page + view)"
        # Each switch_channel is two requests: the posts page and the view.
        self.request_rate(figure, "readmix", script, "/", "switch_channel", 2)
        if self.round == 0:
            self.figures[figure][3].append(f"a posts page is {self.page_bytes:,} bytes of JSON")

    def window(self, proc, ramp, seconds):
        """CPU seconds of `proc` over [ramp + 5 s, ramp + seconds - 5 s] and its VmRSS at the end."""
        time.sleep(ramp + 5)
        t0, c0 = time.time(), cpu_ticks(proc.pid)
        time.sleep(seconds - 10)
        t1, c1 = time.time(), cpu_ticks(proc.pid)
        return (c1 - c0) / TICK, t1 - t0, rss_kib(proc.pid)

    def users(self):
        s = max(self.a.seconds * 3, 40)
        ramp = 10
        locustfile = secret_file(self.tmp / "locustfile.py", f'''
from locust import FastHttpUser, constant_pacing, task
import itertools
names = itertools.count()

class ChatUser(FastHttpUser):
    wait_time = constant_pacing(5)

    def on_start(self):
        r = self.client.post("/api/v4/users/login",
                             json={{"login_id": f"lt-user-{{next(names)}}", "password": "{PASSWORD}"}})
        self.token = r.headers.get("Token")
        self.me = r.json()["id"]
        teams = self.client.get("/api/v4/users/me/teams",
                                headers={{"Authorization": "Bearer " + self.token}}).json()
        self.path = f"/api/v4/users/{{self.me}}/teams/{{teams[0]['id']}}/channels/members"

    @task
    def check_unreads(self):
        self.client.get(self.path, headers={{"Authorization": "Bearer " + self.token}},
                        name="check_unreads")
''')
        per_min = lambda cpu, secs: cpu / (USERS * secs / 60)
        cpu_figure = f"CPU per simulated user-minute, {USERS:,} users, one action per 5 s"
        rss_figure = f"RSS per simulated user, {USERS:,} users (whole process, fixed part included)"
        marginal_figure = f"RSS per simulated user, marginal ({HALF:,} → {USERS:,} users)"

        def locust(users, ramp, secs):
            log = open(self.tmp / "locust.log", "w")
            p = subprocess.Popen([self.a.locust, "-f", locustfile, "--headless", "-u", str(users),
                                  "-r", str(max(users // ramp, 1)), "-t", f"{secs + ramp}s", "--host", self.base,
                                  "--only-summary", "--stop-timeout", "5"], stdout=log, stderr=log)
            got = self.window(p, ramp, secs)
            p.wait()
            return got

        def agent_run(binary, users, ramp, secs, profile=False):
            cfg = self.tmp / "users.toml"
            cfg.write_text(workload(self.port, users, "check_unreads", "5s", "0s", secs, ramp))
            q = subprocess.Popen([binary, "run", "--config", cfg, "--skip-setup",
                                  "--results", self.tmp / "users.jsonl"], env=AGENT_ENV,
                                 stdout=subprocess.DEVNULL, stderr=open(self.tmp / "agent-users.log", "w"))
            prof = profile and self.profiler("users", secs - 4, delay=ramp + 5)
            prof_thread = prof and threading.Thread(target=prof, args=(q.pid,), daemon=True)
            if prof_thread:
                prof_thread.start()
            got = self.window(q, ramp, secs)
            q.wait()
            if prof_thread:
                prof_thread.join()
            return got

        def peer():
            cpu, secs, rss = locust(USERS, ramp, s)
            self.sample(cpu_figure, "CPU-s", "Locust", "Locust", per_min(cpu, secs),
                        f"Locust {cpu:.2f} CPU-s over {secs:.0f} s")
            self.sample(rss_figure, "KiB", "Locust", "Locust", rss / USERS)
            _, _, half = locust(HALF, 5, 20)
            self.sample(marginal_figure, "KiB", "Locust", "Locust", (rss - half) / (USERS - HALF))

        def floor():
            # The same paced requests from a C event loop: wrk's Lua `delay` waits 5 s after each
            # answer on each of its connections. What the kernel and the loopback cost any
            # generator at this rate on this machine, with nothing simulated.
            lua = secret_file(self.tmp / "paced.lua", f'wrk.headers["Authorization"] = "Bearer {self.token}"\n'
                              'function delay()\n  return 5000\nend\n')
            path = f"/api/v4/users/{self.user}/teams/{self.team}/channels/members"
            out, _, cpu = run_rusage(["wrk", "-t1", f"-c{USERS}", f"-d{s}s", "--timeout", "10s",
                                      "-s", lua, self.base + path])
            m = re.search(r"(\d+) requests in", out)
            self.sample(cpu_figure, "CPU-s", "Locust", "wrk, paced", per_min(cpu, s),
                        f"wrk, paced: {int(m.group(1)) if m else 0:,} requests in {cpu:.2f} CPU-s over {s} s")

        def agent(label, binary):
            first = binary == self.agents[0][1] and self.round == 0
            cpu, secs, rss = agent_run(binary, USERS, ramp, s, profile=first)
            self.sample(cpu_figure, "CPU-s", "Locust", label, per_min(cpu, secs),
                        f"{label} {cpu:.2f} CPU-s over {secs:.0f} s (plus a WebSocket per user)")
            self.sample(rss_figure, "KiB", "Locust", label, rss / USERS)
            _, _, half = agent_run(binary, HALF, 5, 20)
            self.sample(marginal_figure, "KiB", "Locust", label, (rss - half) / (USERS - HALF))
        self.turns([peer, floor] + [lambda a=a: agent(*a) for a in self.agents])

def render(b, seconds, rounds):
    labels = [label for label, _ in b.agents]
    also = "".join(f" --also {l}=…" for l in labels[1:])
    out = [f"\n### Generator cost against wrk and Locust, {time.strftime('%Y-%m-%d')} "
           f"(`python3 bench/peers.py --seconds {seconds} --rounds {rounds}{also}`)\n",
           "| figure | generator | median of the rounds | peer, median | ratio of the medians (rounds' range) |",
           "|---|---|--:|--:|--:|"]
    notes = []
    for name, (unit, peer, values, round_notes) in b.figures.items():
        fmt = (lambda v: f"{v:.1f} {unit}") if unit in ("µs", "KiB") else (lambda v: f"{v:.4f} {unit}")
        peer_v = values.get(peer, [])
        if not peer_v:
            continue
        pm = statistics.median(peer_v)
        for who, vs in values.items():
            if who == peer:
                continue
            rs = [x / y for x, y in zip(vs, peer_v) if y]
            ratio = f"{statistics.median(vs) / pm:.2f}× ({min(rs):.2f}–{max(rs):.2f})" if pm and rs else "–"
            out.append(f"| {name} | {who} | {fmt(statistics.median(vs))} | {peer}: {fmt(pm)} | {ratio} |")
        if round_notes:
            notes.append(f"- {name}: " + "; ".join(round_notes) + ".")
    return "\n".join(out + [""] + notes) + "\n"

PARTS = ("check_unreads", "read_mix", "users")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=20, help="length of each request-rate run (default 20)")
    ap.add_argument("--append", metavar="FILE", help="append the result table to FILE (e.g. BENCHMARKS.md)")
    ap.add_argument("--perf", metavar="DIR", help="profile the agent's first round of each part into DIR (skews its CPU)")
    ap.add_argument("--locust", metavar="PATH", default=shutil.which("locust"),
                    help="the locust command (default: the one on PATH)")
    ap.add_argument("--bin-dir", metavar="DIR", type=Path,
                    help="run DIR/chat-server and DIR/loadtest-agent instead of building this checkout's")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each figure (default 3)")
    ap.add_argument("--agent-threads", type=int, default=1,
                    help="load threads of every agent measured (default 1, as wrk -t1 and one Locust process)")
    ap.add_argument("--also", metavar="LABEL=PATH", action="append", default=[],
                    help="another loadtest-agent binary measured in the same rounds (repeatable)")
    ap.add_argument("--only", metavar="PART", action="append", choices=PARTS,
                    help=f"measure only this part ({', '.join(PARTS)}; repeatable; default all)")
    a = ap.parse_args()
    also = []
    for spec in a.also:
        label, _, path = spec.partition("=")
        if not label or not path or not Path(path).is_file():
            sys.exit(f"--also {spec!r}: write LABEL=PATH with PATH an agent binary")
        also.append((label, Path(path).resolve()))
    a.also = also
    if a.rounds < 1:
        sys.exit("--rounds: at least 1")
    if a.agent_threads < 1:
        sys.exit("--agent-threads: at least 1")
    AGENT_ENV.update(LOADTEST_AGENT_THREADS=str(a.agent_threads), TOKIO_WORKER_THREADS=str(a.agent_threads))
    if a.bin_dir:
        for b in ("chat-server", "loadtest-agent"):
            if not (a.bin_dir / b).is_file():
                sys.exit(f"--bin-dir {a.bin_dir}: no {b} there (copy both release binaries of the build to compare)")
    if a.seconds < 15:
        sys.exit("--seconds: at least 15 (the user-minute window leaves 5 s at each end)")
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    if not a.locust or not Path(a.locust).exists():
        sys.exit("Locust is not installed: python3 -m venv V && V/bin/pip install locust, then --locust V/bin/locust")
    if a.bin_dir:
        rel = a.bin_dir.resolve()
    else:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "chat-server", "-p", "loadtest-agent"],
                       cwd=ROOT, check=True)
        rel = ROOT / "target" / "release"
    tmp = Path(tempfile.mkdtemp(prefix="lt-peers-"))
    b = Bench(a, tmp, rel)
    try:
        b.start_server()
        b.setup()
        for r in range(a.rounds):
            b.round = r
            for part in (getattr(b, p) for p in a.only or PARTS):
                print(f"== round {r + 1} of {a.rounds}: {part.__name__}", flush=True)
                part()
        text = render(b, a.seconds, a.rounds)
        print(text)
        if a.append:
            with open(a.append, "a") as f:
                f.write(text)
    finally:
        if b.server and b.server.poll() is None:
            b.server.terminate()
            b.server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
