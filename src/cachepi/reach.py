"""Where an upstream request may go: the address rules against SSRF, applied where a name is
resolved and again on the peer a connection actually reached (DNS rebinding), for the
request being made (told through a context variable)."""

from __future__ import annotations

import contextvars
import ipaddress
import socket
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_reqrep import ClientRequest
from aiohttp.resolver import DefaultResolver
from aiohttp.tracing import Trace

# Addresses that embed an IPv4 address, judged by that: IPv4-mapped, NAT64 (well-known prefix).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_public(address: str) -> bool:
    """Is `address` (an IP address, as text) one anybody on the internet could reach?
    Loopback, private (RFC 1918, CGNAT 100.64/10, unique-local fc00::/7), link-local,
    unspecified, multicast, reserved and documentation ranges are not, nor any IPv6 form
    of an IPv4 address that is not."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            address.partition("%")[0]  # an IPv6 zone ("fe80::1%eth0") says nothing more
        )
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
        elif ip.teredo is not None:
            return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_private or ip.is_loopback
    )


class AddressRefused(aiohttp.ClientConnectionError):
    """A request would reach an address it may not."""


class AddressesRefused(OSError):
    """A name resolved to no address a request may reach (raised in the resolver, where
    aiohttp expects an OSError)."""


@dataclass
class Hop:
    """What the request being made may connect to, seen by the resolver and the connector
    through a context variable; and whether it got a connection."""

    public_only: bool
    connected: bool = False


HOP: contextvars.ContextVar[Hop | None] = contextvars.ContextVar("cachepi_hop", default=None)


class CheckingResolver(AbstractResolver):
    """The default resolver, less the addresses the current request may not reach."""

    def __init__(self) -> None:
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        hop = HOP.get()
        if hop is None or not hop.public_only:
            return results
        allowed = [result for result in results if is_public(result["host"])]
        if not allowed:
            refused = ", ".join(sorted({result["host"] for result in results}))
            raise AddressesRefused(f"{host} resolves to addresses not allowed ({refused})")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


class CheckingConnector(aiohttp.TCPConnector):
    """A connector that checks the address each connection (new or pooled) is connected
    to, before the request goes out on it."""

    async def connect(  # the base class names the parameter `timeout`
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109
    ) -> aiohttp.connector.Connection:
        connection = await super().connect(req, traces, timeout)
        hop = HOP.get()
        if hop is None:
            return connection
        hop.connected = True
        if hop.public_only and req.proxy is None:
            transport = connection.transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            if not peer or not is_public(str(peer[0])):
                connection.close()
                raise AddressRefused(f"{req.url.host}: connected to {peer}, not allowed")
        return connection


@dataclass(frozen=True)
class Reach:
    """Where one upstream's requests may go beyond its own origin. `file_hosts`: if set,
    the only hosts files (and every redirect on the way to one) may come from; they may be
    private addresses. `private`: any private address is fine (UPSTREAM_PRIVATE_ADDRESSES
    =allow)."""

    file_hosts: frozenset[str] | None = None
    private: bool = False
