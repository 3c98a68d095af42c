"""The course's traffic guard: only loopback (127.0.0.0/8, ::1) or a course namespace.

Every server and client helper calls :func:`require_loopback` on the address it is
about to use. Namespaced experiments pass ``allow_namespace=True`` only after they
have checked that they run inside a namespace the course itself created.
"""
from __future__ import annotations

import ipaddress

from .errors import UnsafeTargetError

LOOPBACK_HOSTS = {"localhost": "127.0.0.1", "ip6-localhost": "::1"}


def require_loopback(host: str, *, what: str = "address") -> str:
    """Return *host* as a numeric loopback address or raise :class:`UnsafeTargetError`.

    Accepts 127.0.0.0/8, ::1 and the names ``localhost``/``ip6-localhost`` (resolved
    here, never through DNS). Anything else is refused with a message naming the fix.
    """
    if not isinstance(host, str) or not host:
        raise UnsafeTargetError(
            f"the {what} {host!r} is not an IP address.",
            "use '127.0.0.1' (or another 127.x.y.z address) or '::1'.",
        )
    name = LOOPBACK_HOSTS.get(host.lower(), host)
    try:
        addr = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        raise UnsafeTargetError(
            f"the {what} {host!r} is not a numeric IP address; the course never resolves "
            f"names, so that it cannot be tricked into sending traffic off this machine.",
            "use '127.0.0.1' (or another 127.x.y.z address) or '::1'.",
        ) from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if not addr.is_loopback:
        raise UnsafeTargetError(
            f"the {what} {host} is not a loopback address: the course only sends traffic "
            f"to 127.0.0.0/8, ::1, or inside a network namespace it created itself.",
            "use '127.0.0.1' or '::1'; for anything else, run the experiment inside "
            "helpers.netns.Namespace().",
        )
    return str(addr)
