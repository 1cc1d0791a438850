#!/usr/bin/env python3
"""What delivery p99 a box can give the headline workload, from the CPU one delivery costs.

    python3 bench/fanout_model.py [--rate 21] [--members 2000] [--cores 2] [--seconds 600]
                                  [--base-ms 3] US_PER_DELIVERY ...

A model, not a measurement: posts arrive as a Poisson stream at `--rate` per second; each is
delivered to `--members` sockets, and every delivery costs US_PER_DELIVERY microseconds of CPU
on the whole box (server, agents, kernel and database together: `bench/f1.py`'s busy cores over
its deliveries per second). A post's deliveries run after the ones of the posts before it
(first come, first served) on all `--cores` cores at once, spread evenly over its own share of
that time, after `--base-ms` of request and insert. It prints the box's load and the delivery
p99 over the run and per 10 s interval (lowest, median, highest), as bench/f1.py reports them.

It leaves out what makes a real box worse (cores that do not split one post's work evenly,
scheduling, stalls) and counts as broadcast work all of the box's CPU, some of which is not
(idle sockets' pings, the read mix, the sampler): at full scale it lands near the measured tail,
at one-third scale, where that other work is a larger share, above it. BENCHMARKS.md sets it
against measured runs.
"""
import argparse
import math
import random


def model(us, rate, members, cores, seconds, base_ms, seed=1, samples=100):
    rnd = random.Random(seed)
    service = members * us / 1e6 / cores
    t, free, lat = 0.0, 0.0, []
    while t < seconds:
        t += rnd.expovariate(rate)
        start = max(t, free)
        free = start + service
        # `samples` deliveries stand for a post's `members`, evenly spread over its service.
        lat.extend((t, start - t + service * (i + 0.5) / samples + base_ms / 1e3) for i in range(samples))
    p99 = lambda v: sorted(v)[int(len(v) * 0.99)] * 1e3
    intervals = {}
    for at, l in lat:
        intervals.setdefault(int(at // 10), []).append(l)
    per = sorted(p99(v) for v in intervals.values() if len(v) >= samples)
    return service * rate, p99([l for _, l in lat]), per[0], per[len(per) // 2], per[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("us", type=float, nargs="+", metavar="US_PER_DELIVERY")
    ap.add_argument("--rate", type=float, default=21.0, help="posts per second (default 21)")
    ap.add_argument("--members", type=int, default=2000, help="deliveries per post (default 2000)")
    ap.add_argument("--cores", type=int, default=2, help="cores of the box (default 2)")
    ap.add_argument("--seconds", type=float, default=600, help="length of the modelled run (default 600)")
    ap.add_argument("--base-ms", type=float, default=3.0, help="a post's request and insert before its deliveries (default 3)")
    a = ap.parse_args()
    numbers = [a.rate, a.seconds, a.base_ms, *a.us]
    if (not all(math.isfinite(x) for x in numbers) or a.rate <= 0 or a.members <= 0 or a.cores <= 0
            or a.seconds < 20 or a.base_ms < 0 or any(u <= 0 for u in a.us)):
        ap.error("rates, members, cores and costs must be positive numbers, --base-ms not negative, "
                 "and --seconds at least 20")
    if a.rate * a.seconds > 500_000:
        ap.error(f"--rate {a.rate:g} x --seconds {a.seconds:g} is {a.rate * a.seconds:,.0f} posts: "
                 "model at most 500,000 (a 600 s run at 21 posts/s is 12,600)")
    print("| CPU per delivery | load | delivery p99, run | per 10 s interval: lowest / median / highest |")
    print("|--:|--:|--:|--:|")
    for us in a.us:
        load, run, lo, med, hi = model(us, a.rate, a.members, a.cores, a.seconds, a.base_ms)
        flag = "  (past saturation: the queue grows without end)" if load >= 1 else ""
        print(f"| {us:g} µs | {load:.2f} | {run:.1f} ms | {lo:.1f} / {med:.1f} / {hi:.1f} ms |{flag}")


if __name__ == "__main__":
    main()
