"""Where the client may go: public addresses only for hosts it was not configured with.

A result's media URL is whatever the gateway answered (and wherever that redirects to): an
attacker who controls it must not make the bot fetch from inside its own network (cloud
metadata endpoints, a database port). :class:`PublicOnlyResolver` resolves names like
aiohttp's own resolver and refuses every private, loopback, link-local, multicast or
reserved address, so the check holds for the very address connected to (no second lookup
an attacker could answer differently).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class PrivateAddress(OSError):
    """A host resolved to an address that is not on the public internet."""


def is_public(address: str) -> bool:
    """Whether ``address`` (IPv4 or IPv6) is a public, routable unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver, refusing hosts that resolve to non-public addresses."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        private = [r["host"] for r in results if not is_public(r["host"])]
        if private or not results:
            raise PrivateAddress(f"{host} is not a public address ({', '.join(private)})")
        return results

    async def close(self) -> None:
        await self._inner.close()


__all__: list[Any] = ["PrivateAddress", "PublicOnlyResolver", "is_public"]
