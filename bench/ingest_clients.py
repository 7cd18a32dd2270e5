"""Clients of bench/ingest.sh: device registration and bulk Arrow IPC uploads.

    python bench/ingest_clients.py register URL N TOKENS_OUT MACS_OUT
    python bench/ingest_clients.py ids URL TOKENS_FILE IDS_OUT
    python bench/ingest_clients.py bulk URL USER:PASSWORD OBSERVERS_FILE ROWS REQUESTS

Uses only the standard library and pyarrow; prints one summary line per run.
"""
import base64
import concurrent.futures
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

# A valid Ed25519 public key (RFC 8032, test 1): registration needs one, and no benchmark revokes.
RFC8032_KEY = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def connection(url):
    parsed = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)


def register(url, n, tokens_out, macs_out):
    local = threading.local()
    started = time.monotonic()

    def one(i):
        if not hasattr(local, "conn"):
            local.conn = connection(url)
        mac = ":".join(f"{b:02X}" for b in (0x02, (i >> 32) & 255, (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255))
        # The benchmark never revokes: every device gets the public key of RFC 8032's first test vector.
        body = json.dumps({"mac": mac, "revocation_key": RFC8032_KEY})
        local.conn.request("POST", "/v1/devices", body, {"Content-Type": "application/json"})
        response = local.conn.getresponse()
        payload = json.loads(response.read())
        if response.status != 201:
            raise RuntimeError(f"registration {i}: {response.status} {payload}")
        return payload["device_uuid"], payload["upload_token"], mac

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(n), chunksize=64))
    elapsed = time.monotonic() - started
    with open(tokens_out, "w") as tokens, open(macs_out, "w") as macs:
        for uuid, token, mac in results:
            tokens.write(token + "\n")
            macs.write(mac + "\n")
    with open(tokens_out + ".uuids", "w") as uuids:
        for uuid, _, _ in results:
            uuids.write(uuid + "\n")
    print(f"registered {n} devices in {elapsed:.1f} s ({n / elapsed:.0f}/s)")


def ids(url, tokens_file, ids_out):
    """Each device's current rotating identifier (GET /v1/ephemeral-ids?count=1), one a line."""
    tokens = open(tokens_file).read().split()
    local = threading.local()
    started = time.monotonic()

    def one(token):
        if not hasattr(local, "conn"):
            local.conn = connection(url)
        local.conn.request("GET", "/v1/ephemeral-ids?count=1", headers={"Authorization": "Bearer " + token})
        response = local.conn.getresponse()
        payload = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"identifiers: {response.status} {payload}")
        return payload["ids"][0]["id"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, tokens, chunksize=64))
    elapsed = time.monotonic() - started
    with open(ids_out, "w") as out:
        out.writelines(i + "\n" for i in results)
    print(f"fetched the identifiers of {len(results)} devices in {elapsed:.1f} s ({len(results) / elapsed:.0f}/s)")


def bulk(url, credentials, observers_file, rows, requests):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    observers = open(observers_file).read().split()
    macs = [f"02:00:00:{(i >> 16) & 255:02X}:{(i >> 8) & 255:02X}:{i & 255:02X}" for i in range(len(observers))]
    rng = random.Random(7)
    now_us = int(time.time() * 1e6)
    batch = pa.record_batch(
        {
            "observer": pa.array([rng.choice(observers) for _ in range(rows)]),
            "observed": pa.array([rng.choice(macs) for _ in range(rows)]),
            "observed_at": pa.array([now_us - rng.randrange(3_600_000_000) for _ in range(rows)], pa.timestamp("us", "UTC")),
            "duration_s": pa.array([rng.randrange(5, 900) for _ in range(rows)], pa.int32()),
            "rssi": pa.array([rng.randrange(-95, -40) for _ in range(rows)], pa.int16()),
            "tx_power": pa.array([rng.randrange(-20, 0) for _ in range(rows)], pa.int16()),
        }
    )
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    body = sink.getvalue().to_pybytes()
    auth = "Basic " + base64.b64encode(credentials.encode()).decode()
    conn = connection(url)
    latencies = []
    started = time.monotonic()
    for _ in range(requests):
        t = time.monotonic()
        conn.request("POST", "/v1/observations:bulk", body, {"Content-Type": "application/vnd.apache.arrow.stream", "Authorization": auth})
        response = conn.getresponse()
        payload = json.loads(response.read())
        if response.status != 200 or payload["accepted"] != rows:
            raise RuntimeError(f"bulk: {response.status} {payload}")
        latencies.append(time.monotonic() - t)
    elapsed = time.monotonic() - started
    total = rows * requests
    print(
        f"bulk Arrow IPC: {requests} requests x {rows} rows ({len(body) / 2**20:.1f} MiB each) in {elapsed:.1f} s: "
        f"{total / elapsed:,.0f} rows/s; per request p50 {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "register":
        register(args[0], int(args[1]), args[2], args[3])
    elif command == "ids":
        ids(args[0], args[1], args[2])
    elif command == "bulk":
        bulk(args[0], args[1], args[2], int(args[3]), int(args[4]))
    else:
        sys.exit(f"unknown command {command}")
