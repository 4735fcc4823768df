"""Connecting to Ray: once per process, to a cluster when an address is given, else a local Ray."""

from __future__ import annotations

import os


def ensure_ray(address: str | None = None, **init_kwargs) -> None:
    """`ray.init` unless this process is connected already: to `address` (or $RAY_ADDRESS) when one
    is given, else a new local Ray. (`address=None` would join whatever cluster Ray's address file on
    this host names, someone else's or a dead one.) A local Ray starts without the dashboard: on a small machine its
    processes take CPU and memory from the flow."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, log_to_driver=False, **init_kwargs)
