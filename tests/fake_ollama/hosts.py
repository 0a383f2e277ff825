"""`OLLAMA_HOST` → where `serve` listens and where the client commands connect.

A line-by-line port of Ollama's `envconfig.Host()` (and of the Go `net` helpers it
uses), because a wrapper that rewrites `OLLAMA_HOST` must be tested against exactly
the interpretation the real binary applies.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["OllamaHost", "resolve_host"]

_PORT = re.compile(r"[+-]?[0-9]+")  # what strconv.ParseInt(port, 10, 32) accepts


@dataclass(frozen=True)
class OllamaHost:
    scheme: str
    host: str  # "" means every interface (from OLLAMA_HOST=":11435")
    port: str  # kept as text, as Go keeps it: "011434" stays "011434"
    path: str = ""

    @property
    def hostport(self) -> str:
        """Go's `net.JoinHostPort`: what `net.Listen` gets and what its errors show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def port_number(self) -> int:
        return int(self.port)

    @property
    def url(self) -> str:
        """`Host().String()` as the real binary would print it."""
        path = f"/{self.path}" if self.path else ""
        return f"{self.scheme}://{self.hostport}{path}"

    def connect_url(self) -> str:
        """Base URL for the client: bind-anywhere addresses are reached on loopback.

        Go dials ":11435" and "0.0.0.0:11435" as the local machine; an HTTP client
        library needs the loopback address spelled out.
        """
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        connect = OllamaHost(self.scheme, host, self.port, self.path)
        return connect.url


def resolve_host(raw: str | None) -> OllamaHost:
    """`envconfig.Host()` for the value of `OLLAMA_HOST` (None or "" → the default)."""
    # envconfig.Var trims spaces then quotes; Host() trims spaces once more.
    text = (raw or "").strip().strip("\"'").strip()
    default_port = "11434"
    scheme, separator, hostport = text.partition("://")
    if not separator:
        scheme, hostport = "http", text
        if text == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"

    hostport, _, path = hostport.partition("/")
    try:
        host, port = split_host_port(hostport)
    except ValueError:
        host, port = "127.0.0.1", default_port
        literal = parse_ip(hostport.strip("[]"))
        if literal is not None:
            host = literal
        elif hostport:
            host = hostport

    if not _PORT.fullmatch(port) or not 0 <= int(port) <= 65535:
        port = default_port  # the real binary logs "invalid port, using default"
    return OllamaHost(scheme, host, port, path)


def split_host_port(hostport: str) -> tuple[str, str]:
    """Go's `net.SplitHostPort`; ValueError carries Go's message."""
    last_colon = hostport.rfind(":")
    if last_colon < 0:
        raise ValueError("missing port in address")
    start, end_of_host = 0, 0
    if hostport.startswith("["):
        closing = hostport.find("]")
        if closing < 0:
            raise ValueError("missing ']' in address")
        if closing + 1 == len(hostport):
            raise ValueError("missing port in address")
        if closing + 1 != last_colon:
            if hostport[closing + 1] == ":":
                raise ValueError("too many colons in address")
            raise ValueError("missing port in address")
        host = hostport[1:closing]
        start, end_of_host = 1, closing + 1
    else:
        host = hostport[:last_colon]
        if ":" in host:
            raise ValueError("too many colons in address")
    if "[" in hostport[start:]:
        raise ValueError("unexpected '[' in address")
    if "]" in hostport[end_of_host:]:
        raise ValueError("unexpected ']' in address")
    return host, hostport[last_colon + 1 :]


def parse_ip(text: str) -> str | None:
    """Go's `net.ParseIP(text).String()`, or None when `text` is not an IP literal."""
    if "%" in text:  # Go's ParseIP has no zones
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # Go prints ::ffff:a.b.c.d as a.b.c.d
    return str(address)
