#!/usr/bin/env python3
"""Load through bow's edge while something happens (a deploy, kills): keep-alive HTTPS GETs on
loopback for SECONDS (at most 200 000 requests), counting failures; answers after the time
written in MARKER count by app version in `after_mark`; the file MARKER.stop ends the run early. Used by tests/deploy.rs (through
tests/support/load.rs) and bench/deploy.sh.

usage: load_client.py HOST PORT CA SECONDS MARKER [sni]
With `sni`, the TLS handshake names HOST (a certificate from an ACME CA is verified for it).
"""
import http.client, json, os, socket, ssl, sys, time
host, port, ca, seconds, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
sni = len(sys.argv) > 6 and sys.argv[6] == "sni"
# Without `sni`: SNI 127.0.0.1 gets the edge's default leaf (valid for 127.0.0.1); Host picks
# the route.
context = ssl.create_default_context(cafile=ca)


class Loopback(http.client.HTTPSConnection):
    """Connects to 127.0.0.1 and names HOST in the handshake."""

    def connect(self):
        raw = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = context.wrap_socket(raw, server_hostname=host)
ok = failed = 0
errors = []
seen = []
connection = None
end = time.time() + seconds
stop = marker + ".stop"
while time.time() < end and ok + failed < 200000 and not os.path.exists(stop):
    try:
        if connection is None:
            if sni:
                connection = Loopback(host, port, context=context, timeout=5)
            else:
                connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        body = response.read()
        if response.status == 200:
            ok += 1
            try:
                seen.append((time.time(), json.loads(body).get("version", "?")))
            except ValueError:
                seen.append((time.time(), "?"))
        else:
            failed += 1
            errors.append(f"status {response.status}: {body[:200]!r}")
    except Exception as error:
        failed += 1
        errors.append(repr(error))
        connection = None
    time.sleep(0.002)
after = {}
if os.path.exists(marker):
    mark = float(open(marker).read())
    for at, version in seen:
        if at > mark:
            after[version] = after.get(version, 0) + 1
versions = {}
for _, version in seen:
    versions[version] = versions.get(version, 0) + 1
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:10], "versions": versions,
                  "after_mark": after, "seconds": seconds}))
