"""`filterdb submit` and `filterdb jobs`: the flows as Ray jobs on a cluster.

`filterdb submit --address http://HEAD:8265 -- SUBCOMMAND ARGS...` runs `python -m flows.cli
SUBCOMMAND ARGS...` on the cluster through Ray's Job Submission API. The job's runtime environment
carries the project's code (`flows/` and `ops/` as `py_modules`); its dependencies come from the
cluster's image (the configs of cluster/ install them at the pins), or with `--pip` from the pins of
the installed filterdb. `--upload DIR` sends a folder (a catalog and its model files) with the job,
and the command runs inside it, so relative paths resolve there; anything else the arguments name
must be a URI or a path that exists on the cluster. Inside the job `$RAY_ADDRESS` names the cluster,
so the flows join it. With RAY_AUTH_MODE=token the client sends the token it finds the way Ray's own
clients do ($RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).

Top-level imports stay light: Ray's job SDK is imported when a command runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from ops.errors import UsageError

ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
"""Where the dashboard address comes from without --address (Ray's job CLI reads the same two)."""

PROJECT_PACKAGES = ("flows", "ops")
"""The project's code, shipped with every job as py_modules."""

SHIPPED_EXCLUDES = ["__pycache__", "*.pyc", "*.lance"]


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pinned_requirements() -> list[str]:
    """The runtime requirements of the installed filterdb, as pinned in pyproject.toml (no extras)."""
    from importlib.metadata import requires

    return [r for r in requires("filterdb") or [] if "extra ==" not in r]


def runtime_env(upload: str | None = None, pip: bool = False, image: str | None = None,
                env_vars: dict[str, str] | None = None) -> dict:
    """The job's runtime environment: the project's code, and the folder, packages, image and
    environment variables asked for."""
    root = project_root()
    env: dict = {"py_modules": [str(root / name) for name in PROJECT_PACKAGES], "excludes": SHIPPED_EXCLUDES,
                 "env_vars": {"PYTHONUNBUFFERED": "1", **(env_vars or {})}}
    if upload:
        if not Path(upload).is_dir():
            raise UsageError(f"--upload {upload}: not a folder; give the folder that holds the catalog and its model files")
        env["working_dir"] = str(Path(upload).resolve())
    if pip:
        env["pip"] = {"packages": pinned_requirements(), "pip_check": False}
    if image:
        env["image_uri"] = image
    return env


def entrypoint(command: list[str]) -> str:
    """The shell command of the job: `python -m flows.cli` with the subcommand and its arguments."""
    from flows.cli import build_parser

    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no subcommand to run: filterdb submit [options] -- SUBCOMMAND ARGS...")
    parser = build_parser()
    known = _subcommands(parser)
    if command[0] not in known or command[0] in ("submit", "jobs"):
        raise UsageError(f"{command[0]!r} is not a subcommand a job can run (one of: {', '.join(sorted(known - {'submit', 'jobs'}))})")
    try:
        parser.parse_args(command)  # a typo fails here, not minutes later on the cluster
    except SystemExit:
        raise UsageError(f"not submitted: `filterdb {shlex.join(command)}` does not parse (argparse's message above)") from None
    return shlex.join(["python", "-m", "flows.cli", *command])


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def job_client(address: str | None):
    """A JobSubmissionClient for the dashboard at `address` (or $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS);
    failures to connect or authenticate as one UsageError line."""
    address = address or next((os.environ[v] for v in ADDRESS_VARIABLES if os.environ.get(v)), None)
    if not address:
        raise UsageError("no cluster given: pass --address http://HEAD:8265 (the head's dashboard) "
                         "or set RAY_API_SERVER_ADDRESS")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as error:  # noqa: BLE001 - connection, auth and version errors all end here
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = ("the cluster uses token authentication: set RAY_AUTH_MODE=token here and give its token "
                "in $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token" if _is_auth_error(error) else
                "is the head running with the dashboard (ray[default]) and is its port reachable from here?")
        raise UsageError(f"cannot use the Ray cluster at {address}: {message} ({hint})") from None


def _is_auth_error(error: Exception) -> bool:
    text = str(error).lower()
    return any(word in text for word in ("authentication", "unauthorized", "forbidden", "401", "403"))


def submit(address: str | None, command: list[str], wait: bool = True, upload: str | None = None,
           pip: bool = False, image: str | None = None, env_vars: dict[str, str] | None = None,
           submission_id: str | None = None, out=sys.stdout) -> int:
    """Submit a filterdb subcommand as a Ray job; unless `wait` is False, stream its logs and return
    its exit status (0 when it succeeded, the driver's exit code when it failed, 1 when stopped)."""
    command_line, environment = entrypoint(command), runtime_env(upload, pip, image, env_vars)
    client = job_client(address)
    job_id = client.submit_job(entrypoint=command_line, submission_id=submission_id, runtime_env=environment,
                               metadata={"submitted_by": "filterdb submit"})
    print(f"submitted job {job_id}", file=sys.stderr)
    if not wait:
        return 0
    try:
        _stream_logs(client, job_id, out)
    except KeyboardInterrupt:
        print(f"\nstopped following job {job_id}; it goes on (stop it with: filterdb jobs stop {job_id})", file=sys.stderr)
        return 130
    return exit_status(client, job_id)


def _stream_logs(client, job_id: str, out) -> None:
    import asyncio

    async def follow():
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(follow())


def exit_status(client, job_id: str, timeout_s: float = 30.0) -> int:
    """The job's exit status once it is terminal (the log stream may end just before it is)."""
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    info = client.get_job_info(job_id)
    while not info.status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        info = client.get_job_info(job_id)
    print(f"job {job_id}: {info.status.value}" + (f" ({info.message})" if info.status != JobStatus.SUCCEEDED and info.message else ""),
          file=sys.stderr)
    if info.status == JobStatus.SUCCEEDED:
        return 0
    if info.status == JobStatus.FAILED:
        return info.driver_exit_code or 1
    return 1


def list_jobs(address: str | None, out=sys.stdout) -> int:
    """One line per job of the cluster, oldest first: id, status, start time, entrypoint."""
    jobs = sorted(job_client(address).list_jobs(), key=lambda job: job.start_time or 0)
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
        print(f"{job.submission_id or job.job_id}  {job.status.value:<9}  {started}  {job.entrypoint}", file=out)
    if not jobs:
        print("no jobs", file=out)
    return 0


def stop_job(address: str | None, job_id: str) -> int:
    client = job_client(address)
    try:
        stopped = client.stop_job(job_id)
    except RuntimeError as error:
        raise UsageError(f"cannot stop job {job_id}: {str(error).splitlines()[0]} (list the jobs with: filterdb jobs)") from None
    print(f"job {job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def _env_pairs(pairs: list[str] | None) -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--env {pair}: expected NAME=VALUE")
        env[name] = value
    return env


def _submit(args) -> int:
    return submit(args.address, args.subcommand, wait=not args.no_wait, upload=args.upload, pip=args.pip,
                  image=args.image, env_vars=_env_pairs(args.env), submission_id=args.submission_id)


def _jobs(args) -> int:
    if args.action == "stop":
        return stop_job(args.address, args.job_id)
    return list_jobs(args.address)


def add_commands(commands) -> None:
    """Adds this module's subcommands to the `filterdb` parser."""
    address = argparse.ArgumentParser(add_help=False)
    address.add_argument("--address", metavar="URL",
                         help="the head's dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)")

    submit_parser = commands.add_parser(
        "submit", parents=[address], help="run a filterdb subcommand as a job on a Ray cluster",
        description="Runs `python -m flows.cli SUBCOMMAND ARGS...` as a Ray job, follows its log and exits with "
                    "its status. With token authentication (RAY_AUTH_MODE=token), set RAY_AUTH_MODE=token here too "
                    "and give the cluster's token in $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token. "
                    "See docs/cluster.md.",
        usage="filterdb submit [--address URL] [--no-wait] [--upload DIR] [--pip] [--image URI] [--env NAME=VALUE] -- SUBCOMMAND ARGS...")
    submit_parser.add_argument("--no-wait", action="store_true", help="print the job id and return without following the job")
    submit_parser.add_argument("--upload", metavar="DIR",
                               help="send this folder with the job and run inside it (relative paths, e.g. a catalog and its model files, resolve there)")
    submit_parser.add_argument("--pip", action="store_true",
                               help="install filterdb's pinned dependencies in the job's environment (when the cluster's image lacks them)")
    submit_parser.add_argument("--image", metavar="URI", help="run the job in this container image")
    submit_parser.add_argument("--env", action="append", metavar="NAME=VALUE", help="environment variable of the job (repeatable)")
    submit_parser.add_argument("--submission-id", help="the job's id (default: one Ray makes)")
    submit_parser.add_argument("subcommand", nargs=argparse.REMAINDER, help="-- then the subcommand and its arguments")
    submit_parser.set_defaults(run=_submit)

    # --address also after the action (`jobs stop ID --address URL`), not overriding one given before it
    action_address = argparse.ArgumentParser(add_help=False)
    action_address.add_argument("--address", metavar="URL", default=argparse.SUPPRESS, help="as for `filterdb jobs`")
    jobs = commands.add_parser("jobs", parents=[address], help="list the jobs of a Ray cluster, or stop one")
    actions = jobs.add_subparsers(dest="action")
    actions.add_parser("list", parents=[action_address], help="list the jobs (the default)")
    stop = actions.add_parser("stop", parents=[action_address], help="stop a job")
    stop.add_argument("job_id", help="the submission id that `filterdb submit` printed")
    jobs.set_defaults(run=_jobs)
