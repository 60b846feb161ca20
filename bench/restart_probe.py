#!/usr/bin/env python3
"""restart_probe.py: time from SIGKILL of a supervised HTTP server until it answers again.

  restart_probe.py LABEL N GAP_S loop PORT PID_CMD
      the server always listens on PORT; PID_CMD (shell) prints its pid
  restart_probe.py LABEL N GAP_S bow RUN_DIR
      a bow instance: RUN_DIR/state.json names its pid; a restarted instance may listen on a
      new port, read from the PORT in the new process's environment

Repeat N times: wait until the server answers HTTP 200, sleep GAP_S, take t0, SIGKILL the
serving process, wait until it is gone, then poll (1 ms) until its successor answers HTTP 200
(t1). Prints one line
per trial and `RESULT label n= median= p90= min= max=` (milliseconds).
"""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time


def answers(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = s.recv(32)
        s.close()
        return data.startswith(b"HTTP/1.") and b" 200" in data[:16]
    except OSError:
        return False


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def env_port(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"PORT="):
                    return int(item[5:])
    except (OSError, ValueError):
        pass
    return None


class Loop:
    def __init__(self, port, pid_cmd):
        self.port, self.pid_cmd = int(port), pid_cmd

    def current(self):
        """(pid, port) of the serving process, or None."""
        out = subprocess.run(self.pid_cmd, shell=True, capture_output=True, text=True).stdout.split()
        return (int(out[0]), self.port) if out else None

    def successor(self, killed):
        return (None, self.port)


class Bow:
    def __init__(self, run_dir):
        self.state = os.path.join(run_dir, "state.json")

    def current(self):
        try:
            with open(self.state) as f:
                pid = json.load(f)["pid"]
        except (OSError, ValueError, KeyError):
            return None
        port = env_port(pid) if alive(pid) else None
        return (pid, port) if port else None

    def successor(self, killed):
        found = self.current()
        if found and found[0] != killed:
            return found
        return None


def main():
    label, n, gap, mode = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    target = Loop(*sys.argv[5:7]) if mode == "loop" else Bow(sys.argv[5])
    results = []
    for trial in range(n):
        deadline = time.time() + 60
        while True:
            found = target.current()
            if found and answers(found[1]):
                break
            if time.time() > deadline:
                sys.exit(f"{label}: the server never answered")
            time.sleep(0.01)
        time.sleep(gap)
        pid, _ = target.current()
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.0002)
        while True:
            found = target.successor(pid)
            if found and found[1] and answers(found[1]):
                break
            if time.perf_counter() - t0 > 60:
                sys.exit(f"{label}: did not answer again within 60 s")
            time.sleep(0.001)
        ms = (time.perf_counter() - t0) * 1000
        results.append(ms)
        print(f"{label} trial {trial + 1}: pid {pid} killed; answering again after {ms:.1f} ms", flush=True)
    results.sort()
    p90 = results[min(len(results) - 1, int(round(0.9 * (len(results) - 1))))]
    print(
        f"RESULT {label} n={len(results)} median={statistics.median(results):.1f} "
        f"p90={p90:.1f} min={results[0]:.1f} max={results[-1]:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
