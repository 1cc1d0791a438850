#!/usr/bin/env python3
"""Steady-window figures from an agent results file (used by bench/run.sh).

usage: steady.py RESULTS.jsonl FROM_MS TO_MS
prints: held deliveries_per_sec delivery_p99_ms delivery_p50_ms response_p99_ms late_share

Decodes the contract's histograms (HdrHistogram V2 deflate, base64; 1 us .. 1 h, 3 digits) and
merges the intervals that lie inside the window, so the percentiles are exact for the window.
"""
import base64
import json
import struct
import sys
import zlib

SUB_HALF_MAG = 10  # 3 significant digits -> 2048 sub-buckets
SUB_HALF = 1 << SUB_HALF_MAG


def decode(b64):
    """Counts by bucket index."""
    raw = base64.b64decode(b64)
    if not raw:
        return {}
    cookie, length = struct.unpack(">ii", raw[:8])
    inner = zlib.decompress(raw[8 : 8 + length])
    payload_len = struct.unpack(">i", inner[4:8])[0]
    data = inner[40 : 40 + payload_len]
    counts, idx, pos = {}, 0, 0
    while pos < len(data):
        # LEB128 (at most 9 bytes), ZigZag.
        shift, v = 0, 0
        for i in range(9):
            b = data[pos]
            pos += 1
            if i == 8:
                v |= b << shift
                break
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        v = (v >> 1) ^ -(v & 1)
        if v < 0:
            idx += -v
        else:
            if v:
                counts[idx] = counts.get(idx, 0) + v
            idx += 1
    return counts


def value_at(index):
    bucket = (index >> SUB_HALF_MAG) - 1
    sub = (index & (SUB_HALF - 1)) + SUB_HALF
    if bucket < 0:
        sub -= SUB_HALF
        bucket = 0
    # Highest value equivalent to the bucket, as HdrHistogram reports percentiles.
    return (sub << bucket) + (1 << bucket) - 1


def quantile(counts, q):
    total = sum(counts.values())
    if not total:
        return 0
    want, seen = max(1, round(q * total + 0.4999)), 0
    for idx in sorted(counts):
        seen += counts[idx]
        if seen >= want:
            return value_at(idx)
    return 0


def merge(into, counts):
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v


def main():
    path, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    held, received, span, actions, late = 0, 0, 0, 0, 0
    delivery, response = {}, {}
    for line in open(path):
        r = json.loads(line)
        if r.get("kind") != "interval" or r["start_ms"] < lo or r["end_ms"] > hi + 3000:
            continue
        held = max(held, r["gauges"]["websocket_connections"])
        received += r["delivery"]["received"]
        span += r["end_ms"] - r["start_ms"]
        merge(delivery, decode(r["delivery"]["latency"]))
        for a in r["actions"].values():
            merge(response, decode(a["response_time"]))
        actions += r["schedule"]["actions"]
        late += r["schedule"]["late"]
    print(
        held,
        round(received / max(span, 1) * 1000),
        round(quantile(delivery, 0.99) / 1000, 1),
        round(quantile(delivery, 0.5) / 1000, 1),
        round(quantile(response, 0.99) / 1000, 1),
        round(late / max(actions, 1), 4),
    )


if __name__ == "__main__":
    main()
