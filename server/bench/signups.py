#!/usr/bin/env python3
"""N sign-ups (POST /api/v4/users) from C threads at once: signups.py URL N C (see signups.sh)."""
import json, sys, threading, time, urllib.request
base, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lock = threading.Lock(); nxt = [0]; errs = [0]
def worker():
    while True:
        with lock:
            i = nxt[0]; nxt[0] += 1
        if i >= n: return
        body = json.dumps({"username": f"u{i:06d}", "password": "Passw0rd-Passw0rd", "email": f"u{i}@x.example.com"}).encode()
        req = urllib.request.Request(base + "/api/v4/users", data=body, headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=120).read()
        except Exception as e:
            with lock: errs[0] += 1
t = time.time()
ts = [threading.Thread(target=worker) for _ in range(conc)]
[x.start() for x in ts]; [x.join() for x in ts]
print(f"{n} users, concurrency {conc}: {time.time()-t:.1f} s, {errs[0]} errors")
