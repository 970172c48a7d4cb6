"""Fetching image URLs without becoming an SSRF tool.

An ``http(s)`` image URL is fetched only when its host is on the allowlist
(``GUARD_IMAGE_FETCH_ALLOW_HOSTS``), every address the host resolves to is a public one (not
private, loopback, link-local, shared, reserved or multicast; IPv4-mapped, 6to4 and Teredo IPv6
addresses are judged by the IPv4 address inside them), and the connection goes to the address
that was checked (so a DNS answer that changes between check and connect cannot slip through).
IP literals in any spelling the C library accepts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
``[::ffff:127.0.0.1]``) are recognised as addresses. Redirects are followed only to URLs that
pass the same checks, at most three times; the body is limited while it is read; the whole fetch
has one deadline; proxies from the environment are never used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx2

from guard.errors import FetchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)


@dataclass(frozen=True)
class HostAllowlist:
    """Exact host names, or ``*.example.com`` for the subdomains of example.com."""

    patterns: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> HostAllowlist:
        return cls(tuple(p.strip().lower().rstrip(".") for p in text.split(",") if p.strip()))

    def allows(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self.patterns:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False


def literal_ip(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form a resolver would take as an address; else None."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(text) and any(c.isdigit() for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None:
            return public_address(inner)
        if ip in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64 of an IPv4 address
            return public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return ip.is_global and not ip.is_multicast


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class ImageFetcher:
    def __init__(
        self,
        allow_hosts: HostAllowlist,
        *,
        max_bytes: int,
        timeout_s: float,
        resolver: Resolver = system_resolver,
        address_ok: Callable[[IPAddress], bool] = public_address,
        transport: httpx2.AsyncBaseTransport | None = None,
        max_redirects: int = 3,
    ) -> None:
        self.allow_hosts = allow_hosts
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._resolve = resolver
        self._address_ok = address_ok
        self._transport = transport
        self._max_redirects = max_redirects

    async def fetch(self, url: str) -> bytes:
        """The bytes at ``url``, or :class:`FetchError` saying why not."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise FetchError(
                "image_fetch_failed", f"fetching the image took longer than {self.timeout_s}s"
            ) from None

    async def _fetch(self, url: str) -> bytes:
        async with httpx2.AsyncClient(
            transport=self._transport,
            follow_redirects=False,
            trust_env=False,
            timeout=self.timeout_s,
        ) as client:
            for _ in range(self._max_redirects + 1):
                target, host_header, sni = await self._check(url)
                request = client.build_request(
                    "GET",
                    target,
                    headers={"host": host_header, "accept": "image/*"},
                    extensions={"sni_hostname": sni} if sni else None,
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx2.HTTPError as exc:
                    raise FetchError(
                        "image_fetch_failed", f"the image URL could not be fetched: {exc}"
                    ) from None
                try:
                    if response.status_code in (301, 302, 303, 307, 308):
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError("image_fetch_failed", "the image URL redirects nowhere")
                        url = urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        raise FetchError(
                            "image_fetch_failed",
                            f"the image URL answered HTTP {response.status_code}",
                        )
                    return await self._read(response)
                finally:
                    await response.aclose()
        raise FetchError(
            "image_fetch_failed", f"the image URL redirects more than {self._max_redirects} times"
        )

    async def _read(self, response: httpx2.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(
                "image_too_large", f"the image is {declared} bytes; the limit is {self.max_bytes}"
            )
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchError(
                        "image_too_large", f"the image is over the limit of {self.max_bytes} bytes"
                    )
                chunks.append(chunk)
        except httpx2.HTTPError as exc:
            raise FetchError("image_fetch_failed", f"reading the image failed: {exc}") from None
        return b"".join(chunks)

    async def _check(self, url: str) -> tuple[str, str, str | None]:
        """(URL to connect to, Host header, TLS server name) for an allowed ``url``; else FetchError."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FetchError("image_url_not_allowed", f"the image URL is malformed: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError(
                "image_url_not_allowed",
                f"image URLs must be http(s) or data: URLs, not {scheme or '?'}:",
            )
        if parts.username is not None or parts.password is not None:
            raise FetchError("image_url_not_allowed", "image URLs with credentials are not fetched")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise FetchError("image_url_not_allowed", "the image URL has no host")
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise FetchError("image_url_not_allowed", "the image URL's host is not a valid name") from None
        port = port or (443 if scheme == "https" else 80)
        literal = literal_ip(host)
        if literal is not None and not self._address_ok(literal):
            raise FetchError(
                "image_url_not_allowed", "image URLs pointing at private or local addresses are refused"
            )
        if not self.allow_hosts.allows(host):
            raise FetchError(
                "image_url_not_allowed",
                f"the guard does not fetch images from {host!r}: it is not in GUARD_IMAGE_FETCH_ALLOW_HOSTS",
            )
        if literal is not None:
            address = literal
        else:
            try:
                found = await self._resolve(host, port)
            except OSError as exc:
                raise FetchError("image_fetch_failed", f"the image host does not resolve: {exc}") from None
            addresses = [literal_ip(a) for a in found]
            if not addresses or any(a is None or not self._address_ok(a) for a in addresses):
                raise FetchError(
                    "image_url_not_allowed", f"{host!r} resolves to a private or local address; refused"
                )
            first = addresses[0]
            assert first is not None
            address = first
        netloc = f"[{address}]" if address.version == 6 else str(address)
        default_port = port == (443 if scheme == "https" else 80)
        target = f"{scheme}://{netloc}:{port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
        host_header = host if default_port else f"{host}:{port}"
        return target, host_header, (host if scheme == "https" and literal is None else None)
