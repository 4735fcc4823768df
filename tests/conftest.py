import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs, like CI)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory, ray_session):
    """`filterdb demo --quick` built once per session: (its folder `.../demo_out`, its exit status)."""
    from flows.demo.run import run_demo

    out = tmp_path_factory.mktemp("quick_demo") / "demo_out"
    return out, run_demo(str(out), quick=True)
