"""Soak: `proxima serve` under ten minutes of mixed load, with exact counts at the end.

    python bench/soak.py PROXIMA_BIN WORK_DIR [SECONDS]

Starts the server on a fresh store in WORK_DIR (a users file with a tracer and an analyst,
an audit key, flushes every 2 s so that compaction runs too), registers 200 phones, then
for SECONDS (600) keeps, all at once:

- 4 uploaders, 25 requests a second each, 8 observations a request, every request tagged
  with its own number (`duration_s`), sightings of the other phones;
- 2 registrations a second of new phones;
- 10 alert fetches a second by random phones;
- a confirmed case every 15 s (`POST /v1/cases` with a tracer's bearer token: a trace and
  its alerts);
- Flight SQL over ADBC: a tracer's `trace_contacts(phone, now(), 2)` of the latest case
  (her session's declared purpose) and an analyst's aggregate by day, one after the
  other, without pause;

and samples the server's resident memory every 5 s. Then it reads the operations port's
latency histograms (p99 per route: the upper bound of the bucket the 99th percentile falls
in), stops the server (SIGTERM flushes), and counts in the store: every acknowledged upload
stored exactly once (8 rows), nothing else; every registration a `devices` row; every case a
`cases` row. Prints the figures BENCHMARKS.md records; writes the memory samples to
WORK_DIR/rss.csv. Exits non-zero if a count is off or any request failed.
"""
import base64
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

RFC8032_KEY = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
PASSWORD = "soak password 1"
PER_REQUEST = 8
FIRST_SEQ = 1_000_000
HTTP_PORT, FLIGHT_PORT = 18190, 50190


class Tally:
    """Latencies and failures by kind of request, shared by the load threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latencies = defaultdict(list)
        self.failures = defaultdict(list)

    def record(self, kind, seconds, failure=None):
        with self.lock:
            if failure is None:
                self.latencies[kind].append(seconds)
            else:
                self.failures[kind].append(failure)


def conn():
    return http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=120)


def request(c, method, path, body=None, headers=None):
    c.request(method, path, body, headers or {})
    response = c.getresponse()
    return response.status, response.read()


def mac_of(i):
    return ":".join(f"{b:02X}" for b in (0x0A, 0, (i >> 16) & 255, (i >> 8) & 255, i & 255, 0x01))


def register(c, i):
    body = json.dumps({"mac": mac_of(i), "revocation_key": RFC8032_KEY})
    status, payload = request(c, "POST", "/v1/devices", body, {"Content-Type": "application/json"})
    if status != 201:
        raise RuntimeError(f"registration {i}: {status} {payload[:200]!r}")
    payload = json.loads(payload)
    return payload["device_uuid"], payload["upload_token"], mac_of(i)


def paced(per_second, until, step):
    """Calls step() per_second times a second until `until` (monotonic)."""
    interval = 1.0 / per_second
    next_at = time.monotonic()
    while time.monotonic() < until:
        step()
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def main(binary, work, seconds):
    os.makedirs(work, exist_ok=True)
    store, wal = os.path.join(work, "store"), os.path.join(work, "wal")
    if os.path.exists(store):
        sys.exit(f"{store} exists: give a fresh WORK_DIR")
    users, audit_key = os.path.join(work, "users.toml"), os.path.join(work, "audit.key")
    for user, role in [("tracy", "tracer"), ("ann", "analyst")]:
        subprocess.run([binary, "user", "add", user, "--role", role, "--users", users],
                       input=PASSWORD.encode(), check=True, stdout=subprocess.DEVNULL)
    subprocess.run([binary, "audit", "key", "--out", audit_key], check=True, stdout=subprocess.DEVNULL)
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen(
        [binary, "--data", store, "serve", "--users", users, "--audit-key", audit_key,
         "--http", f"127.0.0.1:{HTTP_PORT}", "--flight", f"127.0.0.1:{FLIGHT_PORT}", "--wal-dir", wal,
         "--device-rate", "0", "--registration-rate", "0", "--registration-work", "0", "--accept-mac",
         "--flush-interval", "2s"],
        stdout=log, stderr=subprocess.STDOUT)
    ops = http.client.HTTPConnection("127.0.0.1", HTTP_PORT + 1, timeout=60)
    for _ in range(600):
        try:
            if request(ops, "GET", "/readyz")[0] == 200:
                break
        except OSError:
            ops = http.client.HTTPConnection("127.0.0.1", HTTP_PORT + 1, timeout=60)
        time.sleep(0.5)
    else:
        sys.exit("the server did not become ready; see serve.log")

    c = conn()
    phones = [register(c, i) for i in range(200)]
    basic = "Basic " + base64.b64encode(f"tracy:{PASSWORD}".encode()).decode()
    status, token = request(c, "POST", "/v1/auth/token", "{}", {"Authorization": basic, "Content-Type": "application/json"})
    assert status == 200, token
    tracer = "Bearer " + json.loads(token)["token"]

    tally = Tally()
    acked, registered, cases = set(), [], []
    acked_lock = threading.Lock()
    seq = iter(range(FIRST_SEQ, 10**9))
    seq_lock = threading.Lock()
    start = time.monotonic()
    until = start + seconds

    def uploader(n):
        mine = phones[n::4]
        c = conn()
        rng = random.Random(n)

        def step():
            uuid, token, _ = rng.choice(mine)
            with seq_lock:
                s = next(seq)
            now = time.time()
            rows = [{"observed": rng.choice(phones)[2],
                     "observed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - k)),
                     "duration_s": s, "rssi": -60} for k in range(PER_REQUEST)]
            t = time.perf_counter()
            status, body = request(c, "POST", "/v1/observations", json.dumps(rows),
                                   {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            if status == 200:
                tally.record("POST /v1/observations", time.perf_counter() - t)
                with acked_lock:
                    acked.add((uuid, s))
            else:
                tally.record("POST /v1/observations", 0, f"{status} {body[:200]!r}")

        paced(25, until, step)

    def registrar():
        c = conn()
        i = iter(range(10_000, 10**6))

        def step():
            t = time.perf_counter()
            try:
                registered.append(register(c, next(i)))
                tally.record("POST /v1/devices", time.perf_counter() - t)
            except RuntimeError as e:
                tally.record("POST /v1/devices", 0, str(e))

        paced(2, until, step)

    def alerts():
        c = conn()
        rng = random.Random(7)

        def step():
            _, token, _ = rng.choice(phones)
            t = time.perf_counter()
            status, body = request(c, "GET", "/v1/alerts", None, {"Authorization": f"Bearer {token}"})
            if status == 200:
                tally.record("GET /v1/alerts", time.perf_counter() - t)
            else:
                tally.record("GET /v1/alerts", 0, f"{status} {body[:200]!r}")

        paced(10, until, step)

    def reporter():
        c = conn()
        # Each case a different phone.
        order = iter(random.Random(11).sample([uuid for uuid, _, _ in phones], len(phones)))

        def step():
            uuid = next(order)
            t = time.perf_counter()
            status, body = request(c, "POST", "/v1/cases", json.dumps({"device_uuid": uuid, "status": "confirmed"}),
                                   {"Authorization": tracer, "Content-Type": "application/json"})
            if status == 201:
                tally.record("POST /v1/cases", time.perf_counter() - t)
                cases.append((json.loads(body)["case_id"], uuid, time.monotonic()))
            else:
                tally.record("POST /v1/cases", 0, f"{status} {body[:200]!r}")

        paced(1 / 15, until, step)

    def flight():
        import adbc_driver_flightsql.dbapi as flight_sql

        url = f"grpc://127.0.0.1:{FLIGHT_PORT}"
        ann = flight_sql.connect(url, db_kwargs={"username": "ann", "password": PASSWORD}).cursor()
        # A case is readable over SQL once the log holding it was flushed (--flush-interval 2s).
        readable = lambda: [case for case in cases if time.monotonic() - case[2] > 3]
        while not readable() and time.monotonic() < until:
            time.sleep(0.1)
        tracy, purpose = None, None
        while time.monotonic() < until:
            # A tracer reads for the latest case, which her connection declares as purpose
            # (a new login for each case: the header is a connection option).
            case_id, uuid, _ = readable()[-1]
            if purpose != case_id:
                tracy = flight_sql.connect(url, db_kwargs={
                    "username": "tracy", "password": PASSWORD,
                    "adbc.flight.sql.rpc.call_header.x-proxima-purpose": f"case:{case_id}"}).cursor()
                purpose = case_id
            for kind, cursor, sql in [
                ("Flight SQL trace_contacts", tracy, f"SELECT * FROM trace_contacts('{uuid}', now(), 2)"),
                ("Flight SQL aggregate", ann,
                 "SELECT day, sum(contacts) AS contacts FROM daily_contacts_by_location GROUP BY day"),
            ]:
                t = time.perf_counter()
                try:
                    cursor.execute(sql)
                    cursor.fetchall()
                    tally.record(kind, time.perf_counter() - t)
                except Exception as e:  # a failed query is a finding, counted and printed
                    tally.record(kind, 0, str(e)[:300])

    samples = []

    def sampler():
        while time.monotonic() < until:
            with open(f"/proc/{server.pid}/status") as status:
                rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            samples.append((time.monotonic() - start, rss / 1024))
            time.sleep(5)

    threads = [threading.Thread(target=uploader, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=f) for f in (registrar, alerts, reporter, flight, sampler)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Latency histograms of the server's own (a bucket's upper bound for the 99th percentile).
    _, metrics = request(ops, "GET", "/metrics")
    buckets = defaultdict(list)
    for line in metrics.decode().splitlines():
        if line.startswith(("proxima_http_request_duration_seconds_bucket", "proxima_flight_request_duration_seconds_bucket")):
            name, value = line.rsplit(" ", 1)
            labels = dict(part.split("=", 1) for part in name[name.index("{") + 1:-1].split(","))
            le = labels.pop("le").strip('"')
            key = " ".join(v.strip('"') for v in labels.values())
            buckets[key].append((float("inf") if le == "+Inf" else float(le), float(value)))
    server_p99 = {}
    for key, points in buckets.items():
        points.sort()
        total = points[-1][1]
        if total:
            server_p99[key] = (next(le for le, n in points if n >= 0.99 * total), int(total))

    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)
    with open(os.path.join(work, "rss.csv"), "w") as out:
        out.write("seconds,rss_mib\n")
        for t, rss in samples:
            out.write(f"{t:.0f},{rss:.1f}\n")

    def sql(query):
        result = subprocess.run([binary, "--data", store, "sql", "--format", "csv", "-c", query],
                                check=True, capture_output=True, text=True)
        return [line.split(",") for line in result.stdout.strip().splitlines()[1:]]

    stored = {(observer, int(s)): int(n) for observer, s, n in sql(
        f"SELECT observer, duration_s, count(*) FROM observations WHERE duration_s >= {FIRST_SEQ} GROUP BY observer, duration_s")}
    wrong = {k: n for k, n in stored.items() if n != PER_REQUEST}
    missing, extra = acked - stored.keys(), stored.keys() - acked
    devices = int(sql("SELECT count(*) FROM devices")[0][0])
    stored_cases = int(sql("SELECT count(*) FROM cases")[0][0])

    print(f"== soak: {seconds} s of mixed load")
    for kind in sorted(set(tally.latencies) | set(tally.failures)):
        ordered = sorted(tally.latencies[kind])
        pick = lambda p: ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000 if ordered else float("nan")
        print(f"{kind}: {len(ordered)} ok, {len(tally.failures[kind])} failed; client p50 {pick(0.5):.1f} ms, "
              f"p99 {pick(0.99):.1f} ms, max {pick(1.0):.1f} ms")
        for failure in tally.failures[kind][:3]:
            print(f"    failure: {failure}")
    print("server p99 by route (bucket upper bound, requests):")
    for key, (le, n) in sorted(server_p99.items()):
        print(f"  {key}: <= {le * 1000:g} ms ({n})")
    rss = [r for _, r in samples]
    third = max(1, len(rss) // 3)
    print(f"RSS MiB: start {rss[0]:.0f}, min {min(rss):.0f}, max {max(rss):.0f}, end {rss[-1]:.0f}; "
          f"mean of first third {sum(rss[:third]) / third:.0f}, of last third {sum(rss[-third:]) / third:.0f} "
          f"({len(rss)} samples, {work}/rss.csv)")
    print(f"uploads: {len(acked)} acknowledged ({len(acked) * PER_REQUEST} rows); stored: {len(stored)} requests, "
          f"{sum(stored.values())} rows; missing {len(missing)}, unacknowledged {len(extra)}, not whole {len(wrong)}")
    print(f"devices: {devices} stored, {200 + len(registered)} registered; cases: {stored_cases} stored, {len(cases)} reported")
    ok = (not missing and not extra and not wrong and devices == 200 + len(registered)
          and stored_cases == len(cases) and not any(tally.failures.values()))
    print("exact counts: " + ("all hold" if ok else "OFF"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 600)
