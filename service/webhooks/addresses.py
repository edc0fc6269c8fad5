"""Where a webhook may be sent: the SSRF guard.

A tenant's URL is resolved here, and every address it resolves to must be a public one:
loopback, private, link-local (cloud metadata among them), shared, reserved, multicast and
unspecified addresses are refused, unless the admin's `webhook_allowed_hosts` lists the
host, the address or a network holding it. The check runs when an endpoint is created and
again right before each send (DNS answers change), and the send then connects to the very
address checked (`Target`), so a second lookup cannot swap in another one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Cloud instance metadata (AWS, GCP, Azure, ...; AWS's IPv6 one): refused even inside an
# allowed network, unless the address itself is listed.
METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressRefused(Exception):
    """The URL may not be called; the message says why, for the tenant."""


@dataclass(frozen=True)
class Target:
    """A checked URL: `url` names the address to connect to, `host_header` and
    `server_name` the host the tenant wrote (HTTP Host, TLS SNI and certificate check)."""

    url: str
    host_header: str
    server_name: str
    address: str


@dataclass(frozen=True)
class Allowed:
    hosts: frozenset[str]
    networks: tuple[Network, ...]
    addresses: frozenset[IP]

    @staticmethod
    def of(entries: Sequence[str]) -> Allowed:
        hosts: set[str] = set()
        networks: list[Network] = []
        addresses: set[IP] = set()
        for entry in entries:
            entry = entry.strip().lower()
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                hosts.add(entry.rstrip("."))
                continue
            networks.append(network)
            if network.num_addresses == 1:
                addresses.add(network.network_address)
        return Allowed(frozenset(hosts), tuple(networks), frozenset(addresses))

    def permits(self, ip: IP) -> bool:
        if ip in METADATA:
            return ip in self.addresses
        return any(ip in network for network in self.networks)


def _parse(url: str) -> tuple[SplitResult, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"The URL is not valid: {exc}.") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise AddressRefused("The URL must start with http:// or https://.")
    host = parts.hostname
    if not host:
        raise AddressRefused("The URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("The URL must not hold credentials; the signature authenticates.")
    if port == 0:
        raise AddressRefused("The URL's port must not be 0.")
    return parts, host.rstrip(".")


def _public(ip: IP) -> bool:
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if mapped is not None:
        return _public(mapped)
    return ip.is_global and not ip.is_multicast and ip not in METADATA


def _resolve(host: str, port: int) -> list[IP]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressRefused(f"The URL's host '{host}' does not resolve ({exc}).") from None
    found: list[IP] = []
    for info in infos:
        # A scoped IPv6 address (fe80::1%eth0) is link-local, refused below by its address.
        ip = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise AddressRefused(f"The URL's host '{host}' does not resolve.")
    return found


def check(url: str, allowed_entries: Sequence[str]) -> Target:
    """The address to send `url`'s requests to, or AddressRefused. Every address the host
    resolves to must pass: a host answering with one public and one private address is
    refused, whichever a later lookup would return first."""
    parts, host = _parse(url)
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    allowed = Allowed.of(allowed_entries)
    addresses = _resolve(host, port)
    if host.lower() not in allowed.hosts:
        for ip in addresses:
            if not _public(ip) and not allowed.permits(ip):
                raise AddressRefused(
                    f"The URL's host '{host}' resolves to {ip}, a private, loopback, "
                    "link-local or otherwise non-public address; webhooks are sent to "
                    "public addresses only (an admin may allow hosts: "
                    "TUNEPLANE_WEBHOOK_ALLOWED_HOSTS)."
                )
    ip = addresses[0]
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    pinned = parts._replace(netloc=netloc, fragment="").geturl()
    host_header = parts.netloc.rpartition("@")[2]
    return Target(url=pinned, host_header=host_header, server_name=host, address=str(ip))
