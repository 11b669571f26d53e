"""Remote images, fetched only when asked for: http(s) to public hosts, with a deadline and a size cap.

Training and benchmark files are data, often scraped; an image reference in them is an address the
machine will connect to. Without limits a row could make a training node read its cloud metadata
service (``http://169.254.169.254/...``) or a service on localhost or the private network, hang on a
server that never answers, or fill memory with an endless body. So fetching is off unless the caller
passes ``allow_remote_images`` (``--allow-remote-images``), and then:

- only ``http`` and ``https`` (also after redirects);
- the host must resolve only to public addresses: private, loopback, link-local, reserved,
  multicast and unspecified ones are refused. The check runs when the socket connects, on the
  very addresses connected to, so a redirect or a DNS answer that changes between a check and
  the connection cannot slip past it;
- a deadline of :data:`FETCH_TIMEOUT` seconds for the whole image, checked between reads, and each
  socket wait (connect, headers, one read) bounded by the same number;
- at most :data:`FETCH_MAX_BYTES` bytes, read in chunks and stopped at the cap.

Environment proxies are not used: the address check must see the host the data names.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from functools import cache
from typing import Any

from vift_plugin.data.files import ImageError

URL_SCHEMES = ("http", "https")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

FETCH_TIMEOUT = 30.0
FETCH_MAX_BYTES = 50 * 1024 * 1024
_READ_SIZE = 1 << 16


def is_url(reference: str) -> bool:
    """Whether ``reference`` is a URL (``scheme://...``, any scheme) rather than a file path."""
    return bool(_URL.match(reference))


def check_url(url: str) -> None:
    """An :class:`ImageError` unless ``url`` is ``http``/``https`` with a host (``file://``, ``ftp://``
    and the like would read local files or other services, not pictures)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as error:  # e.g. an unclosed "[" of an IPv6 host
        raise ImageError(f"image URL {url} is malformed: {error}") from error
    if parts.scheme.lower() not in URL_SCHEMES:
        raise ImageError(f"image URL {url}: scheme {parts.scheme!r} is not allowed; only http and https")
    if not parts.hostname:
        raise ImageError(f"image URL {url} has no host")


def refused_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` may not be fetched from (``"link-local"``, ``"private"`` ...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind in ("loopback", "unspecified", "link_local", "private", "multicast", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-global"


def public_addresses(host: str, port: int) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` results for ``host``; an :class:`ImageError` if any address is not public.

    Every address must pass, not just the first: a name that also resolves to a private address
    could be connected to through it.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ImageError(f"cannot resolve image host {host!r}: {error}") from error
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        kind = refused_kind(address)
        if kind is not None:
            raise ImageError(
                f"refused to fetch from {host!r}: it resolves to {address} ({kind} address); "
                "remote images must be on public hosts"
            )
    return infos


def _connect_public(address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
    """``socket.create_connection`` to one of the host's checked addresses (never re-resolved).

    ``timeout`` is http.client's: the fetch's seconds, or its "global default" marker (no timeout set).
    """
    host, port = address
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in public_addresses(host, port):
        sock = socket.socket(family, kind, proto)
        try:
            if isinstance(timeout, (int, float)):
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as error:
            sock.close()
            last = error
    raise last or OSError(f"no address to connect to for {host!r}")


def _guarded(connection_class: type[http.client.HTTPConnection]) -> Any:
    """A ``do_open`` connection factory whose connections go through :func:`_connect_public`."""

    def connect(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        connection = connection_class(host, **kwargs)
        connection._create_connection = _connect_public  # type: ignore[attr-defined]  # http.client's hook
        return connection

    return connect


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_guarded(http.client.HTTPConnection), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_guarded(http.client.HTTPSConnection), req, context=self._context)  # type: ignore[attr-defined]


@cache
def _opener() -> urllib.request.OpenerDirector:
    """http(s) with redirects and nothing else: no proxies, ``file:``, ``ftp:`` or ``data:`` handlers."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        _HTTPHandler(),
        _HTTPSHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def fetch_image_bytes(url: str, *, timeout: float = FETCH_TIMEOUT, max_bytes: int = FETCH_MAX_BYTES) -> bytes:
    """The body of ``url`` under the rules of this module; an :class:`ImageError` naming the URL otherwise."""
    check_url(url)
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "vift-plugin", "Accept": "image/*"})
    chunks: list[bytes] = []
    size = 0
    try:
        with _opener().open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ImageError(f"image URL {url} is {int(declared):,} bytes, over the {max_bytes:,}-byte cap")
            while chunk := response.read1(_READ_SIZE):
                size += len(chunk)
                if size > max_bytes:
                    raise ImageError(f"image URL {url} is over the {max_bytes:,}-byte cap (stopped reading)")
                if time.monotonic() > deadline:
                    raise ImageError(f"image URL {url} took longer than {timeout:g}s to fetch")
                chunks.append(chunk)
    except ImageError:
        raise
    except urllib.error.HTTPError as error:
        raise ImageError(f"could not fetch image {url}: HTTP {error.code} {error.reason}") from error
    except (OSError, http.client.HTTPException, ValueError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise ImageError(f"could not fetch image {url}: {reason}") from error
    return b"".join(chunks)
