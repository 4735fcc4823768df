"""Connecting to Ray: once per process, to a cluster when an address is given, else a local Ray."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from ops.errors import UsageError

PROBE_TIMEOUT_S = 5.0
"""How long the reachability probe of a cluster address waits (Ray itself retries for minutes)."""


def ensure_ray(address: str | None = None, **init_kwargs) -> None:
    """`ray.init` unless this process is connected already: to `address` (or $RAY_ADDRESS) when one
    is given, else a new local Ray. (`address=None` would join whatever cluster Ray's address file on
    this host names, someone else's or a dead one.) A given address is probed first, so that a dead
    one fails within seconds, naming it, instead of Ray's endless reconnects. A local Ray starts
    without the dashboard: on a small machine its processes take CPU and memory from the flow."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        check_reachable(address)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)


def check_reachable(address: str) -> None:
    """Raise a UsageError naming `address` unless a TCP connection to its host and port succeeds.
    `auto` is resolved the way Ray resolves it (its address file, then running GCS processes)."""
    what_to_do = ("start the cluster (`ray start --head`) or correct the address; without --address and "
                  "RAY_ADDRESS, filterdb starts its own local Ray")
    given = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            address = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            raise UsageError(f"Ray address 'auto': no running Ray cluster found on this machine; {what_to_do}") from None
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise UsageError(f"Ray address {given!r} is not HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(f"no Ray cluster reachable at {given} ({host}:{port}: {reason}); {what_to_do}") from None
