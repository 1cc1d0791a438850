#!/usr/bin/env python3
"""The allocation sites holding the most heap at a process's peak, from `heaptrack_print -F`
flame-graph files made with `--flamegraph-cost-type peak` (one `frame;frame;… bytes` per line).

    python3 bench/heap_top.py [--per N] [--top K] server.fg agent.fg

Each site is named by its innermost frames from our crates and the libraries that hold
per-connection state (tungstenite, hyper, tokio's tasks and channels, …); `--per N` adds the
bytes per connection or user.
"""
import argparse
import collections
import re
import sys

OURS = re.compile(r"chat_server|loadtest_agent|tungstenite|hyper::|axum::|tokio::sync|tokio::runtime::task::raw|"
                  r"tokio::net|sqlx|hdrhistogram|serde_json|reqwest|rustls|bytes::")
HASH = re.compile(r"::h[0-9a-f]{16}")
MANGLED = {"$LT$": "<", "$GT$": ">", "$C$": ",", "$u20$": " ", "$RF$": "&", "_$u7b$$u7b$closure$u7d$$u7d$": "{closure}",
           "..": "::"}


def name(frame):
    frame = HASH.sub("", frame)
    for k, v in MANGLED.items():
        frame = frame.replace(k, v)
    return re.sub(r"\s*\(.*\)$", "", frame)


def top(path, per, k):
    sites = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, cost = line.rstrip("\n").rpartition(" ")
            if not stack or not cost.isdigit():
                continue
            cost = int(cost)
            total += cost
            frames = [name(x) for x in stack.split(";")]
            ours = [x for x in frames if OURS.search(x)]
            sites[" <- ".join(reversed(ours[-2:])) if ours else "(elsewhere) " + frames[-1]] += cost
    print(f"\n{path}: {total / 2**20:.1f} MiB at the peak" + (f", {total / per / 1024:.1f} KiB per connection/user" if per else ""))
    for site, cost in sites.most_common(k):
        extra = f"  {cost / per:7.0f} B each" if per else ""
        print(f"{cost / 2**20:8.2f} MiB{extra}  {site[:170]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per", type=int, default=0, help="connections or users, for per-unit figures")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    if a.per < 0 or a.top < 1:
        ap.error("--per must be 0 or more and --top at least 1")
    for p in a.files:
        try:
            top(p, a.per, a.top)
        except OSError as e:
            sys.exit(f"heap_top: cannot read {p}: {e.strerror} (make it with heaptrack_print -F FILE "
                     "--flamegraph-cost-type peak, as bench/heap.sh does)")


if __name__ == "__main__":
    main()
