"""Machines on a network for tests: each node a Linux network namespace of its own, joined
to this host by a veth pair (iproute2, root only), whose link a test can cut and restore;
a TCP forwarder on the host side of each link (PostgreSQL listens on 127.0.0.1 only); and,
run as ``python -m tests.netns load URL COUNT`` inside a namespace, a client that reports
as JSON what answered.

``unavailable()`` says why namespaces cannot be made here (None when they can).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IP = shutil.which("ip") or "/usr/sbin/ip"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGS``; a failure raises with what ip said."""
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def unavailable() -> str | None:
    """Why namespaces with a veth link cannot be made on this machine, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not os.path.exists(IP):
        return "iproute2 (ip) is not installed"
    name = f"omt-probe-{os.getpid()}"
    try:
        done = ip("netns", "add", name, check=False)
        if done.returncode != 0:
            return f"ip netns add failed: {done.stderr.strip() or done.returncode}"
        done = ip(
            "-n",
            name,
            "link",
            "add",
            "probe0",
            "type",
            "veth",
            "peer",
            "name",
            "probe1",
            check=False,
        )
        if done.returncode != 0:
            return f"ip link add type veth failed: {done.stderr.strip() or done.returncode}"
    finally:
        ip("netns", "del", name, check=False)
    return None


def _free_second_octet() -> int:
    """A 10.X.0.0/24 that no address or route of this host touches (pid-spread, so that two
    runs at once pick different ones)."""
    used = ip("-o", "-4", "addr").stdout + ip("-4", "route", "show", "table", "all").stdout
    taken = {int(m) for m in re.findall(r"\b10\.(\d{1,3})\.", used)}
    for step in range(50):
        octet = 200 + (os.getpid() + step) % 50
        if octet not in taken:
            return octet
    raise RuntimeError("no free 10.X.0.0/24 among 10.200-249 on this host")


@dataclass
class Node:
    """One machine: a namespace ``name`` with ``address`` on its veth end, the host being
    ``host_address`` on the other end (``host_link``)."""

    name: str
    host_link: str
    node_link: str
    host_address: str
    address: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this namespace."""
        return [IP, "netns", "exec", self.name, *argv]

    def popen(
        self, argv: Sequence[str], *, log: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace (from the project root), output to ``log``;
        it is stopped when the network is torn down. ``ip netns exec`` execs the command,
        so the process is the command itself."""
        with open(log, "ab") as out:
            process = subprocess.Popen(
                self.command(*argv), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def cut(self) -> None:
        """Take the link down on the host side: nothing passes either way."""
        ip("link", "set", self.host_link, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_link, "up")
        # Back when the host has its route to the node again (the link is up).
        deadline = time.monotonic() + 10
        while f"dev {self.host_link}" not in ip("route", "get", self.address, check=False).stdout:
            assert time.monotonic() < deadline, f"no route to {self.address} after restore"
            time.sleep(0.05)

    def stop_processes(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@contextlib.contextmanager
def network(count: int) -> Iterator[list[Node]]:
    """``count`` namespaces, each linked to the host by its own veth pair and /30: host
    10.X.0.(4i+1), node 10.X.0.(4i+2). Everything (processes, links, namespaces, the
    route) goes at exit, even after a failure."""
    octet = _free_second_octet()
    pid = os.getpid()
    supernet = f"10.{octet}.0.0/24"
    nodes: list[Node] = []
    made: list[str] = []
    route = False
    try:
        # With a link down, its /30 has no route: connections to the node then fail at
        # once instead of leaving by the default route.
        route = ip("route", "add", "unreachable", supernet, check=False).returncode == 0
        for i in range(count):
            node = Node(
                name=f"omt-{pid}-{i}",
                host_link=f"omt{pid}h{i}",
                node_link=f"omt{pid}n{i}",
                host_address=f"10.{octet}.0.{4 * i + 1}",
                address=f"10.{octet}.0.{4 * i + 2}",
            )
            ip("netns", "add", node.name)
            made.append(node.name)
            nodes.append(node)
            ip("link", "add", node.host_link, "type", "veth", "peer", "name", node.node_link,
               "netns", node.name)  # fmt: skip
            ip("addr", "add", f"{node.host_address}/30", "dev", node.host_link)
            ip("link", "set", node.host_link, "up")
            ip("-n", node.name, "link", "set", "lo", "up")
            ip("-n", node.name, "addr", "add", f"{node.address}/30", "dev", node.node_link)
            ip("-n", node.name, "link", "set", node.node_link, "up")
        yield nodes
    finally:
        for node in nodes:
            node.stop_processes()
        for name in made:
            # Whatever else still runs in it (started by us through ip netns exec).
            for line in ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(line), 9)
            ip("netns", "del", name, check=False)  # takes its veth pair with it
        for node in nodes:
            ip("link", "del", node.host_link, check=False)
        if route:
            ip("route", "del", "unreachable", supernet, check=False)


class TcpForwarder:
    """Accepts on ``listen`` and relays each connection to ``target``, in threads: what
    lets a namespace reach a server that listens on the host's 127.0.0.1 only.
    ``reset()`` aborts every relayed connection, as the far side of a dead link does."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(listen)
        self._listener.settimeout(0.1)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        # Each relayed connection (client side, server side) and how many of its two pumps
        # have ended.
        self._pairs: dict[tuple[socket.socket, socket.socket], int] = {}
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name="forwarder")

    def __enter__(self) -> TcpForwarder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join()
        self._listener.close()
        self.reset()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._pairs[(client, server)] = 0
                self.accepted += 1
            pair = (client, server)
            for source, sink in (pair, (server, client)):
                threading.Thread(target=self._pump, args=(source, sink, pair), daemon=True).start()

    def _pump(
        self,
        source: socket.socket,
        sink: socket.socket,
        pair: tuple[socket.socket, socket.socket],
    ) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        # The second pump to end closes both (only pumps close: no descriptor is reused
        # under a pump still reading it).
        with self._lock:
            self._pairs[pair] += 1
            if self._pairs[pair] < 2:
                return
            del self._pairs[pair]
        for sock in pair:
            sock.close()

    def reset(self) -> None:
        """Abort every relayed connection: linger 0, so closing sends RST and keeps no
        state; a peer that sends on one later (once its link is back) is answered RST."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the pumps, which close


# -- the client that runs inside a namespace -------------------------------------------------


def load(url: str, count: int, spacing: float, tag: str) -> dict[str, object]:
    """``count`` requests to the proxy at ``url``, ``spacing`` seconds apart, cycling through
    chat, generate and tags: what answered, how slow the slowest was, and the proxy's own
    analytics gauges read after."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    statuses: dict[str, int] = {}
    slowest = 0.0
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        for i in range(count):
            started = time.monotonic()
            try:
                if i % 3 == 0:
                    messages = [{"role": "user", "content": f"{tag} {i}"}]
                    answer = http.post(
                        "/api/chat", json={"model": "llama3.2", "messages": messages}
                    )
                elif i % 3 == 1:
                    body = {"model": "llama3.2", "prompt": f"{tag} {i}", "stream": False}
                    answer = http.post("/api/generate", json=body)
                else:
                    answer = http.get("/api/tags")
                key = str(answer.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(spacing)
        samples = {}
        text = http.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ollama_analytics_"):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    samples[f"{sample.name}{{{labels}}}"] = sample.value
    return {"statuses": statuses, "slowest": slowest, "metrics": samples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.netns")
    commands = parser.add_subparsers(dest="command", required=True)
    loader = commands.add_parser("load", help="send requests, print what answered as JSON")
    loader.add_argument("url")
    loader.add_argument("count", type=int)
    loader.add_argument("--spacing", type=float, default=0.0)
    loader.add_argument("--tag", default="netns")
    args = parser.parse_args(argv)
    print(json.dumps(load(args.url, args.count, args.spacing, args.tag)), flush=True)


if __name__ == "__main__":
    main()
