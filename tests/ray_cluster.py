"""A real two-node Ray cluster on this machine, made with `ray start` as docs/farm.md makes one.

Each node runs in a session of its own (its daemons and worker processes keep its session id, even
when the raylet that started a worker is gone), so that the test can stop exactly the processes it
started (SIGTERM, then SIGKILL) and kill -9 one node's raylet.
Node death is noticed within about two seconds (health checks every 0.5 s) instead of Ray's default 30.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
FAST_FAILURE = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "500",
                "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}


def ray_env() -> dict[str, str]:
    """The environment of the nodes and of the batch: this checkout importable, no token (a cluster on
    127.0.0.1 of the test's own), node death noticed quickly."""
    return dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **FAST_FAILURE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One `ray start` node: its temp dir (short: Ray's socket paths must fit 107 bytes) and its session."""

    def __init__(self, args: list[str]):
        self.temp = tempfile.mkdtemp(prefix="et-ray-", dir="/tmp")
        cmd = [str(RAY), "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
               f"--temp-dir={self.temp}", *args]
        start = subprocess.Popen(cmd, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        # `ray start` leads a session of its own: the processes of the node keep its pid as their session id.
        self.sid = start.pid
        try:
            output = start.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            output = "(timed out after 120 s)"
        if start.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({start.returncode}): {output[-3000:]}")

    def pids(self) -> list[int]:
        """This node's processes (its session's): daemons and Ray workers."""
        return [pid for pid in _pids() if _sid(pid) == self.sid]

    def kill(self) -> None:
        """The node lost: kill -9 its raylet, then its worker processes (a machine that dies takes them along;
        a worker whose raylet alone died was seen to finish its task and hand the result to the driver)."""
        (raylet,) = [pid for pid in self.pids() if _exe(pid) == "raylet"]
        os.kill(raylet, signal.SIGKILL)
        for pid in self.pids():
            if _command(pid).startswith("ray::"):
                with _gone_ok():
                    os.kill(pid, signal.SIGKILL)

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            with _gone_ok():
                os.kill(pid, sig)

    def stop(self) -> None:
        stop_nodes([self])


def stop_nodes(nodes: list[Node]) -> None:
    """SIGTERM to every node's processes at once, SIGKILL to what is left after 5 s; the temp dirs removed."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for node in nodes:
            node.signal(sig)
        deadline = time.monotonic() + wait
        while any(node.pids() for node in nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
    for node in nodes:
        shutil.rmtree(node.temp, ignore_errors=True)


class Cluster:
    """A head node and a second node, one CPU each, on 127.0.0.1; stopped by `stop` whatever happened."""

    def __init__(self):
        self.nodes: list[Node] = []
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        try:
            self.head = self._add(["--head", f"--port={port}", "--include-dashboard=false"])
            self.second = self._add([f"--address={self.address}"])
        except BaseException:
            self.stop()
            raise

    def _add(self, args: list[str]) -> Node:
        node = Node(args)
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        stop_nodes(self.nodes)


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _exe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/exe").resolve().name
    except OSError:
        return ""


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


class _gone_ok:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is ProcessLookupError
