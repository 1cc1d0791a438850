#!/usr/bin/env python3
"""What delivery p99 a box can give the headline workload, from the CPU one delivery costs.

    python3 bench/fanout_model.py [--rate 21] [--members 2000] [--cores 2] [--seconds 600]
                                  [--base-ms 3] [--arrivals FILE [--top N]] US_PER_DELIVERY ...

A model, not a measurement: posts arrive as a Poisson stream at `--rate` per second; each is
delivered to `--members` sockets, and every delivery costs US_PER_DELIVERY microseconds of CPU
on the whole box (server, agents, kernel and database together: `bench/f1.py`'s busy cores over
its deliveries per second). A post's deliveries run after the ones of the posts before it
(first come, first served) on all `--cores` cores at once, spread evenly over its own share of
that time, after `--base-ms` of request and insert. It prints the box's load and the delivery
p99 over the run and per 10 s interval (lowest, median, highest), as bench/f1.py reports them.

`--arrivals FILE` takes the post times from FILE instead (seconds from the run's start, one per
line: what `cargo run --release -p loadtest-agent --example arrivals -- CONFIG AGENTS` prints, the
very times a run with that config's seed posts at) and also lists the `--top` intervals with the
longest modelled p99, to set beside a measured run's worst intervals.

It leaves out what makes a real box worse (cores that do not split one post's work evenly,
scheduling, stalls) and counts as broadcast work all of the box's CPU, some of which is not
(idle sockets' pings, the read mix, the sampler): at full scale it lands near the measured tail,
at one-third scale, where that other work is a larger share, above it. BENCHMARKS.md sets it
against measured runs.
"""
import argparse
import math
import random


def poisson(rate, seconds, seed=1):
    rnd = random.Random(seed)
    t = rnd.expovariate(rate)
    while t < seconds:
        yield t
        t += rnd.expovariate(rate)


def read_arrivals(path):
    """Post times from `path`, one number of seconds per line, in order."""
    times = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    t = float(line)
                except ValueError:
                    raise SystemExit(f"{path}:{n}: {line.strip()[:40]!r} is not a number of seconds")
                if not math.isfinite(t) or t < 0 or (times and t < times[-1]):
                    raise SystemExit(f"{path}:{n}: {t} is not a time after the line before it")
                times.append(t)
    except OSError as e:
        raise SystemExit(f"--arrivals {path}: {e.strerror}")
    if not times:
        raise SystemExit(f"--arrivals {path}: no times in it")
    return times


def model(us, rate, members, cores, seconds, base_ms, arrivals=None, samples=100):
    """(load, p99 over the run, lowest, median and highest interval p99, {interval: p99})."""
    service = members * us / 1e6 / cores
    free, lat, n = 0.0, [], 0
    for t in arrivals if arrivals is not None else poisson(rate, seconds):
        n += 1
        start = max(t, free)
        free = start + service
        # `samples` deliveries stand for a post's `members`, evenly spread over its service.
        lat.extend((t, start - t + service * (i + 0.5) / samples + base_ms / 1e3) for i in range(samples))
    p99 = lambda v: sorted(v)[int(len(v) * 0.99)] * 1e3
    intervals = {}
    for at, l in lat:
        intervals.setdefault(int(at // 10), []).append(l)
    by = {k * 10: p99(v) for k, v in intervals.items() if len(v) >= samples}
    per = sorted(by.values())
    span = arrivals[-1] if arrivals else seconds
    return service * n / span, p99([l for _, l in lat]), per[0], per[len(per) // 2], per[-1], by


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("us", type=float, nargs="+", metavar="US_PER_DELIVERY")
    ap.add_argument("--rate", type=float, default=21.0, help="posts per second (default 21)")
    ap.add_argument("--members", type=int, default=2000, help="deliveries per post (default 2000)")
    ap.add_argument("--cores", type=int, default=2, help="cores of the box (default 2)")
    ap.add_argument("--seconds", type=float, default=600, help="length of the modelled run (default 600)")
    ap.add_argument("--base-ms", type=float, default=3.0, help="a post's request and insert before its deliveries (default 3)")
    ap.add_argument("--arrivals", metavar="FILE", help="post times (seconds, one per line) instead of a Poisson stream")
    ap.add_argument("--top", type=int, default=5, help="with --arrivals: intervals listed by modelled p99 (default 5)")
    a = ap.parse_args()
    numbers = [a.rate, a.seconds, a.base_ms, *a.us]
    if (not all(math.isfinite(x) for x in numbers) or a.rate <= 0 or a.members <= 0 or a.cores <= 0
            or a.seconds < 20 or a.base_ms < 0 or any(u <= 0 for u in a.us)):
        ap.error("rates, members, cores and costs must be positive numbers, --base-ms not negative, "
                 "and --seconds at least 20")
    if a.top < 0:
        ap.error("--top: 0 or more")
    arrivals = read_arrivals(a.arrivals) if a.arrivals else None
    if arrivals and len(arrivals) > 500_000:
        ap.error(f"--arrivals {a.arrivals}: {len(arrivals):,} posts: model at most 500,000")
    if not arrivals and a.rate * a.seconds > 500_000:
        ap.error(f"--rate {a.rate:g} x --seconds {a.seconds:g} is {a.rate * a.seconds:,.0f} posts: "
                 "model at most 500,000 (a 600 s run at 21 posts/s is 12,600)")
    print("| CPU per delivery | load | delivery p99, run | per 10 s interval: lowest / median / highest |")
    print("|--:|--:|--:|--:|")
    tops = []
    for us in a.us:
        load, run, lo, med, hi, by = model(us, a.rate, a.members, a.cores, a.seconds, a.base_ms, arrivals)
        flag = "  (past saturation: the queue grows without end)" if load >= 1 else ""
        print(f"| {us:g} µs | {load:.2f} | {run:.1f} ms | {lo:.1f} / {med:.1f} / {hi:.1f} ms |{flag}")
        tops.append((us, sorted(by.items(), key=lambda kv: -kv[1])[:a.top]))
    if arrivals and a.top:
        print()
        for us, top in tops:
            print(f"- {us:g} µs: the longest modelled intervals: "
                  + ", ".join(f"{k:.0f} s ({v:.1f} ms)" for k, v in top))


if __name__ == "__main__":
    main()
