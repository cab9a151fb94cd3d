"""What ``autonomi-actors top`` costs the node it watches.

    .venv/bin/python bench/bench_top_overhead.py [--seconds 10] [--interval 0.4] [--requests 300]

Starts a real node process (``run --first`` in a temporary root dir) and prints:

1. the round trip of one ``status`` request over the control socket (one refresh
   of ``top``), p50/p95/max over ``--requests`` sequential requests, and the size
   of the answer;
2. the node's CPU time per ``status`` request, from the node's utime+stime in
   ``/proc/<pid>/stat`` while requests run back to back;
3. the node's CPU% over ``--seconds`` without ``top``, then over ``--seconds`` with a
   real ``top --interval`` running in a pseudo-terminal (160x50), and ``top``'s own CPU%.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import cpu_seconds, percentiles
from cli.control import ControlError, request

CLI = [sys.executable, "-m", "cli"]


def cpu_percent(pid: int, seconds: float) -> float:
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - before) / (time.monotonic() - started)


def wait_for_node(root: Path, timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status: dict[str, object] = request(root, "status")
            return status
        except ControlError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class TopInTerminal:
    """``autonomi-actors top`` in a pseudo-terminal, its output drained and thrown away."""

    def __init__(self, root: Path, interval: float) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"
        self.proc = subprocess.Popen(
            [*CLI, "top", "--root-dir", str(root), "--interval", str(interval)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.screen_bytes = 0
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(self.master, 65536):
                self.screen_bytes += len(data)

    def quit(self) -> int:
        os.write(self.master, b"q")
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        os.close(self.master)
        return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each CPU%% window")
    parser.add_argument("--interval", type=float, default=0.4, help="top's refresh interval")
    parser.add_argument("--requests", type=int, default=300, help="status round trips to time")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-top-") as tmp:
        root = Path(tmp) / "node"
        node = subprocess.Popen(
            [*CLI, "run", "--root-dir", str(root), "--first"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            status = wait_for_node(root)
            time.sleep(1.0)  # let start-up work settle
            actors = status.get("actors")
            print(
                f"node pid {node.pid}, actors: {', '.join(actors) if isinstance(actors, dict) else '?'}"
            )

            round_trips: list[float] = []
            answer_bytes = len(json.dumps(status))
            cpu_before = cpu_seconds(node.pid)
            started = time.monotonic()
            for _ in range(args.requests):
                t0 = time.perf_counter()
                request(root, "status")
                round_trips.append((time.perf_counter() - t0) * 1000.0)
            hammer_seconds = time.monotonic() - started
            node_cpu_per_request = (cpu_seconds(node.pid) - cpu_before) / args.requests
            p50, p95 = percentiles(round_trips)
            print(
                f"status round trip over the control socket ({args.requests} sequential): "
                f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, max {max(round_trips):.2f} ms; "
                f"answer {answer_bytes} bytes"
            )
            print(
                f"node CPU per status request: {node_cpu_per_request * 1000:.2f} ms "
                f"(back to back: {args.requests / hammer_seconds:.0f} requests/s); "
                f"at one request per {args.interval} s that is "
                f"{100 * node_cpu_per_request / args.interval:.2f}% of one core"
            )

            time.sleep(1.0)
            idle = cpu_percent(node.pid, args.seconds)
            print(f"node CPU without top: {idle:.2f}% over {args.seconds:.0f} s")

            top = TopInTerminal(root, args.interval)
            time.sleep(1.0)  # top's own start-up (imports) is not the node's cost
            top_cpu_before = cpu_seconds(top.proc.pid)
            top_started = time.monotonic()
            watched = cpu_percent(node.pid, args.seconds)
            top_cpu = 100 * (cpu_seconds(top.proc.pid) - top_cpu_before)
            top_cpu /= time.monotonic() - top_started
            code = top.quit()
            print(
                f"node CPU with top --interval {args.interval}: {watched:.2f}% over "
                f"{args.seconds:.0f} s (+{watched - idle:.2f} points)"
            )
            print(
                f"top itself: {top_cpu:.2f}% CPU, {top.screen_bytes / 1024:.0f} KiB written "
                f"to the terminal, exit status {code} after q"
            )
        finally:
            node.terminate()
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()


if __name__ == "__main__":
    main()
