#!/usr/bin/env python3
"""Where a load generator's latency goes, from a loopback packet capture of its TLS connections.

Splits each request's time, as wrk measures it, into the proxy's part (client data packet in →
first answer packet out) and the client's part (answer packet in → the client's next data
packet), and shows the connection start: when the server's first TLS flight went out and how
long the client took to answer it. Used to find that wrk's p99 at 256 connections is mostly
wrk's own TLS start (see bench/edge.sh, "steady state").

Capture the first seconds of a run (SYN and PSH packets are enough), then analyse:

    timeout 2.5 taskset -c 1 tcpdump -i lo -nn -B 65536 -w /tmp/run.pcap \\
        "tcp port 19443 and tcp[tcpflags] & (tcp-syn|tcp-push) != 0" &
    sleep 0.8; wrk -t1 -c256 -d3s https://bench.localhost:19443/
    python3 bench/pcap_latency.py /tmp/run.pcap 19443
"""
import collections
import struct
import sys


def packets(path):
    """(time, source port, destination port, payload length, TCP flags) of each IPv4 packet."""
    with open(path, "rb") as f:
        header = f.read(24)
        magic = header[:4]
        order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        link = struct.unpack(order + "I", header[20:24])[0]
        skip = {1: 14, 113: 16, 0: 4}.get(link, 14)  # Ethernet (lo), Linux cooked, BSD loopback
        while True:
            record = f.read(16)
            if len(record) < 16:
                return
            seconds, fraction, captured, _ = struct.unpack(order + "IIII", record)
            data = f.read(captured)
            ip = data[skip:]
            if len(ip) < 20 or ip[0] >> 4 != 4:
                continue
            ihl = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ihl:]
            sport, dport = struct.unpack(">HH", tcp[:4])
            offset = (tcp[12] >> 4) * 4
            yield seconds + fraction / (1e9 if nano else 1e6), sport, dport, total - ihl - offset, tcp[13]


def summary(values):
    values = sorted(values)
    n = len(values)
    if not n:
        return "-"
    q = lambda p: values[min(n - 1, int(n * p))] * 1000
    return f"p50 {q(.5):.2f} p90 {q(.9):.2f} p99 {q(.99):.2f} max {values[-1] * 1000:.2f} ms (n={n})"


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    flows = collections.defaultdict(list)
    start = None
    for time, sport, dport, length, flags in packets(path):
        if flags & 2:  # SYN: the first one from a client starts the clock
            if start is None and dport == port:
                start = time
            continue
        if length == 0:
            continue
        if dport == port:
            flows[sport].append([time, "client", length])
        elif sport == port:
            flows[dport].append([time, "server", length])
    if start is None:
        sys.exit("no connection to that port in the capture")
    proxy, client, flights = [], [], []
    for events in flows.values():
        turns = []  # consecutive packets of one side merged into one turn
        for event in events:
            if turns and turns[-1][1] == event[1]:
                turns[-1][2] += event[2]
            else:
                turns.append(event)
        if len(turns) < 3:
            continue
        # client hello, server flight, client finished (+ first request), then request/answer turns
        flights.append((turns[1][0] - start, turns[1][0] - turns[0][0], turns[2][0] - turns[1][0]))
        for this, following in zip(turns[2:], turns[3:]):
            if this[1] == "client":
                proxy.append((this[0] - start, following[0] - this[0]))
            else:
                client.append((this[0] - start, following[0] - this[0]))
    print(f"{len(flights)} connections")
    print("server: client hello → its first flight  ", summary([f[1] for f in flights]))
    print("client: server flight → finished+request ", summary([f[2] for f in flights]))
    print("server flights sent by (ms):", {ms: sum(1 for f in flights if f[0] * 1000 <= ms)
                                           for ms in (25, 50, 100, 150, 200, 300)})
    for low, high in ((0, .1), (.1, .2), (.2, .3), (.3, .5), (.5, 1e9)):
        window = lambda pairs: [d for t, d in pairs if low <= t < high]
        if window(proxy):
            print(f"from {low:.1f} s: proxy (request → answer) {summary(window(proxy))}")
            print(f"            client (answer → next request) {summary(window(client))}")


if __name__ == "__main__":
    main()
