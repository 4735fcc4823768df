"""Two real Ray nodes on loopback: jobs submitted with `filterdb submit` extract on both, a shift
analysis runs as a job, and an extraction survives the SIGKILL of the second node's raylet.

The cluster is this test's own: `ray start --head` and `ray start --address` with their own ports,
worker port ranges, temp dir and token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH); each `ray start
--block` process is stopped by its PID, then whatever it started, by PID (never `ray stop`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lance
import psutil
import pytest
import torch

from ops.catalog import write_catalog

SMALL = ["mobilenetv3_small_050", "lcnet_050", "regnetx_002", "efficientnet_b0"]
LARGE = "resnet18"  # 1.2 M filters: long enough for the kill to land mid-extraction


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def worker_port_range(width: int = 40) -> tuple[int, int]:
    """A range of free ports (checked one by one) for one node's workers."""
    for _ in range(50):
        start = secrets.randbelow(20000) + 30000
        if all(_port_free(p) for p in range(start, start + width)):
            return start, start + width - 1
    raise RuntimeError("no free range of worker ports")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Node:
    """One `ray start --block` process and its descendants, stopped by PID."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = open(log, "w")
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--block", *args],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def raylet(self) -> psutil.Process:
        return next(p for p in self.descendants() if p.name() == "raylet")

    def stop(self) -> None:
        processes = [psutil.Process(self.process.pid), *self.descendants()] if self.process.poll() is None else self.descendants()
        for p in processes:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (1 CPU, the dashboard) and a second node (1 CPU, resource `second_node`) on
    127.0.0.1, token authentication on with a token of their own."""
    folder = tmp_path_factory.mktemp("cluster")
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           # a dead node is noticed in seconds, not the default half minute
           "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    gcs, dashboard, client, *head_ports = free_ports(9)
    low, high = worker_port_range()
    temp_dir = Path("/tmp") / f"ray_two_nodes_{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
    node_ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                  "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
              "--object-store-memory", str(150 * 2**20), "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    head = Node(["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                 "--include-dashboard", "true", "--ray-client-server-port", str(client),
                 "--min-worker-port", str(low), "--max-worker-port", str(high), *common,
                 *[a for flag, port in zip(node_ports, head_ports) for a in (flag, str(port))]],
                env, folder / "head.log")
    nodes = [head]
    try:
        address = f"http://127.0.0.1:{dashboard}"
        wait_for(lambda: submit_cli(address, env, ["jobs"]).returncode == 0, 90, "the head's dashboard")
        second_ports = free_ports(6)
        low2, high2 = worker_port_range()
        second = Node(["--address", f"127.0.0.1:{gcs}", "--resources", '{"second_node": 1}',
                       "--min-worker-port", str(low2), "--max-worker-port", str(high2), *common,
                       *[a for flag, port in zip(node_ports, second_ports) for a in (flag, str(port))]],
                      env, folder / "second.log")
        nodes.append(second)
        wait_for(lambda: alive_nodes(gcs, env) == 2, 90, "the second node to join")
        yield {"address": address, "env": env, "second": second, "gcs": gcs, "folder": folder}
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def alive_nodes(gcs: int, env: dict) -> int:
    """Alive nodes, asked in a separate process (this one never joins the cluster)."""
    code = f"import ray; ray.init(address='127.0.0.1:{gcs}', log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else 0


def node_ids(gcs: int, env: dict) -> dict[str, str]:
    """Node id -> 'head' or 'second' (by the second node's own resource)."""
    code = (f"import ray; ray.init(address='127.0.0.1:{gcs}', log_to_driver=False)\n"
            "for n in ray.nodes():\n print(n['NodeID'], 'second' if 'second_node' in n['Resources'] else 'head')")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    return dict(line.split() for line in result.stdout.strip().splitlines() if len(line.split()) == 2)


def submit_cli(address: str, env: dict, args: list[str], upload: Path | None = None) -> subprocess.CompletedProcess:
    """`filterdb jobs ...`, or `filterdb submit [--upload DIR] -- ARGS...`, in a process of its own."""
    submit = ["submit", "--address", address, *(["--upload", str(upload)] if upload else []), "--", *args]
    return subprocess.run([sys.executable, "-m", "flows.cli", *(args + ["--address", address] if args[0] == "jobs" else submit)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("catalog")
    rows = [{"model_id": f"{LARGE}-s{seed}", "source": "timm", "uri": LARGE, "pretrained": "false", "seed": str(seed),
             "input_size": "3x32x32", "family": "resnet", "task": "untrained"} for seed in range(4)]
    rows += [{"model_id": f"{arch}-s{seed}", "source": "timm", "uri": arch, "pretrained": "false", "seed": str(seed),
              "input_size": "3x32x32", "family": arch.split("_")[0].rstrip("0123456789"), "task": "untrained"}
             for seed in range(2) for arch in SMALL]
    # a model file named relative to the catalog: with --upload it travels with the job
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3)).state_dict(), folder / "tiny.pt")
    rows.append({"model_id": "tiny-checkpoint", "source": "checkpoint", "uri": "tiny.pt", "family": "tiny", "task": "untrained"})
    write_catalog(rows, folder / "catalog.csv")
    return folder / "catalog.csv", [r["model_id"] for r in rows]


def stored(db: Path) -> tuple[list[dict], int]:
    """The models rows (id, status, node, filter count) and the filter rows' count."""
    models = lance.dataset(f"{db}/models.lance").to_table(columns=["model_id", "status", "node", "n_filters_3x3"])
    return models.to_pylist(), lance.dataset(f"{db}/filters.lance").count_rows()


def assert_complete(db: Path, model_ids: list[str]) -> list[dict]:
    """Every model stored once, ok, and the filter rows exactly the models' filters."""
    rows, filters = stored(db)
    assert sorted(r["model_id"] for r in rows) == sorted(model_ids)
    assert {r["status"] for r in rows} == {"ok"}
    assert filters == sum(r["n_filters_3x3"] for r in rows)
    return rows


def test_a_client_without_the_token_is_refused_in_one_line(cluster):
    env = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_TOKEN_PATH"}
    result = submit_cli(cluster["address"], {**env, "HOME": str(cluster["folder"])}, ["jobs"])
    assert result.returncode == 2
    assert "token" in result.stderr and "Traceback" not in result.stderr


def test_a_submitted_extraction_runs_on_both_nodes_and_a_shift_analysis_as_a_job(cluster, catalog, tmp_path):
    catalog_file, model_ids = catalog
    db = tmp_path / "db"
    # the catalog's folder goes with the job, which reads the catalog by its name there
    result = submit_cli(cluster["address"], cluster["env"], ["extract", catalog_file.name, "--db", str(db), "--actors", "2"],
                        upload=catalog_file.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SUCCEEDED" in result.stderr
    rows = assert_complete(db, model_ids)
    names = node_ids(cluster["gcs"], cluster["env"])
    assert {names.get(r["node"]) for r in rows} == {"head", "second"}

    shifts = submit_cli(cluster["address"], cluster["env"], ["shifts", "--db", str(db), "--by", "family"])
    assert shifts.returncode == 0, shifts.stdout[-3000:] + shifts.stderr[-3000:]
    assert "resnet" in shifts.stdout and "lcnet" in shifts.stdout  # the groups of the shift matrix, in the job's log
    assert lance.dataset(f"{db}/analysis/shifts.lance").count_rows() > 0

    listed = submit_cli(cluster["address"], cluster["env"], ["jobs"])
    assert listed.returncode == 0 and listed.stdout.count("SUCCEEDED") >= 2


def test_a_failing_job_exits_with_the_status_of_its_command(cluster, tmp_path):
    result = submit_cli(cluster["address"], cluster["env"], ["quality", "--db", str(tmp_path / "absent")])
    assert result.returncode == 2, result.stderr[-2000:]  # bad input: 2, as on the command line
    assert "no DB at" in result.stdout and "FAILED" in result.stderr  # the job's own message, streamed


def test_a_job_submitted_without_waiting_is_listed_and_can_be_stopped(cluster, catalog, tmp_path):
    job_id = f"filterdb-test-{secrets.token_hex(4)}"
    result = subprocess.run([sys.executable, "-m", "flows.cli", "submit", "--address", cluster["address"], "--no-wait",
                             "--submission-id", job_id, "--", "extract", str(catalog[0]), "--db", str(tmp_path / "db")],
                            env=cluster["env"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and job_id in result.stderr, result.stderr[-2000:]
    stop = submit_cli(cluster["address"], cluster["env"], ["jobs", "stop", job_id])
    assert stop.returncode == 0, stop.stderr[-2000:]

    def listed_as_stopped():
        line = next((l for l in submit_cli(cluster["address"], cluster["env"], ["jobs"]).stdout.splitlines()
                     if l.startswith(job_id)), "")
        return "STOPPED" in line
    wait_for(listed_as_stopped, 60, f"job {job_id} to be stopped")


def test_an_extraction_survives_the_second_node_killed_mid_way(cluster, catalog, tmp_path):
    catalog_file, model_ids = catalog
    db = tmp_path / "db"
    job = subprocess.Popen([sys.executable, "-m", "flows.cli", "submit", "--address", cluster["address"], "--",
                            "extract", str(catalog_file), "--db", str(db), "--actors", "2"],
                           env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = cluster["second"]

    def extracting_on_the_second_node():
        return any("ExtractModels" in " ".join(_cmdline(p)) for p in second.descendants())

    wait_for(extracting_on_the_second_node, 120, "an extraction actor on the second node")
    time.sleep(1.0)  # it has started on a model
    assert job.poll() is None, "the job ended before the node could be killed"
    before = len(stored(db)[0]) if (db / "models.lance").exists() else 0
    second.raylet().send_signal(signal.SIGKILL)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, out[-3000:] + err[-3000:]
    assert before < len(model_ids), "every model was stored before the kill"
    assert_complete(db, model_ids)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # it ended meanwhile
        return []
