"""cluster/: every config loads, has what its tool requires, runs real subcommands, and names the
versions filterdb pins; `filterdb submit` builds its job from the project."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from flows.cli import build_parser
from ops.catalog import read_catalog
from ops.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"


def pins() -> dict[str, str]:
    """Package name (extras dropped, lower case) -> its `==` version in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    found = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;]+)", requirement.strip())
        if match:
            found[match.group(1).lower()] = match.group(3)
    return found


def python_version() -> str:
    """The lowest Python pyproject.toml allows, e.g. 3.11."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    return re.search(r"(\d+\.\d+)", requires).group(1)


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]


def launcher() -> dict:
    return documents("aws.yaml")[0]


def rayjob() -> dict:
    return next(d for d in documents("rayjob.yaml") if d["kind"] == "RayJob")


def subcommands(parser) -> dict:
    return next(a.choices for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")


def filterdb_commands(shell: str) -> list[list[str]]:
    """The `python -m flows.cli ...` commands of a shell line joined by &&."""
    commands = [shlex.split(part) for part in shell.split("&&")]
    for words in commands:
        assert words[:3] == ["python", "-m", "flows.cli"], f"not a filterdb command: {shlex.join(words)}"
    return [words[3:] for words in commands]


def assert_parses(args: list[str]) -> None:
    """The arguments name a real subcommand and parse (argparse exits on anything unknown)."""
    parser = build_parser()
    assert args[0] in subcommands(parser)
    parser.parse_args(args)


def ray_image_versions(image: str) -> tuple[str, str]:
    """rayproject/ray:2.60.0-py311-gpu -> ('2.60.0', '3.11')."""
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)(-\w+)?", image)
    assert match, f"not a rayproject/ray image with its Python: {image}"
    return match.group(1), f"{match.group(2)}.{match.group(3)}"


def test_every_file_of_cluster_is_tested_here():
    assert sorted(p.name for p in CLUSTER.iterdir() if p.is_file() and p.suffix != ".py") == ["Dockerfile", "aws.yaml", "rayjob.yaml"]


def test_launcher_has_a_head_and_worker_groups_with_autoscaling_bounds():
    config = launcher()
    for key in ("cluster_name", "max_workers", "provider", "auth", "head_node_type", "available_node_types",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in config, key
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert any(re.match(r"(g|p)\d", t["node_config"]["InstanceType"]) for t in workers.values()), "no GPU worker group"
    for name, node_type in workers.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]


def test_launcher_installs_the_project_and_runs_ray_at_the_pins():
    config = launcher()
    ray_version, python = ray_image_versions(config["docker"]["image"])
    assert ray_version == pins()["ray"] and python == python_version()
    project = next(target for target, source in config["file_mounts"].items() if source == ".")
    assert any("pip install" in c and c.split()[-1] == project for c in config["setup_commands"])


def test_launcher_turns_on_token_authentication_with_one_token_on_every_node():
    config = launcher()
    assert any(target.endswith("/.ray/auth_token") and source.endswith(".ray/auth_token")
               for target, source in config["file_mounts"].items())
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token ray start" in c for c in commands)


def test_rayjob_is_a_kuberay_v1_job_with_token_auth_and_worker_bounds():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == pins()["ray"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["template"]["spec"]["containers"][0]["image"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    assert any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
               for g in cluster["workerGroupSpecs"])


def test_rayjob_runs_an_extraction_then_a_shift_analysis_that_parse():
    commands = filterdb_commands(rayjob()["spec"]["entrypoint"])
    assert [c[0] for c in commands] == ["extract", "shifts"]
    for args in commands:
        assert_parses(args)
    extract_db = commands[0][commands[0].index("--db") + 1]
    assert commands[1][commands[1].index("--db") + 1] == extract_db


def test_rayjob_catalog_is_mounted_where_the_extraction_reads_it_and_is_valid(tmp_path):
    config_map = next(d for d in documents("rayjob.yaml") if d["kind"] == "ConfigMap")
    head = rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volume = next(v for v in head["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"])
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    catalog = filterdb_commands(rayjob()["spec"]["entrypoint"])[0][1]
    assert Path(catalog).parent == Path(mount["mountPath"]) and Path(catalog).name in config_map["data"]
    (tmp_path / Path(catalog).name).write_text(config_map["data"][Path(catalog).name])
    assert len(read_catalog(tmp_path / Path(catalog).name)) == len(config_map["data"]["catalog.csv"].strip().splitlines()) - 1


def test_every_image_is_ray_at_the_pin_with_the_projects_python():
    job = rayjob()["spec"]["rayClusterSpec"]
    images = {c["image"] for spec in [job["headGroupSpec"], *job["workerGroupSpecs"]] for c in spec["template"]["spec"]["containers"]}
    assert len(images) == 1  # one image, built from cluster/Dockerfile
    base = re.search(r"^FROM\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE).group(1)
    ray_version, python = ray_image_versions(base)
    assert ray_version == pins()["ray"] and python == python_version()
    assert re.search(r"^RUN pip install .*/home/ray/filterdb$", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE)


def test_pinned_versions_named_in_cluster_files_equal_pyproject():
    wanted = pins()
    for path in CLUSTER.iterdir():
        if path.is_file():
            for name, version in re.findall(r"([A-Za-z][A-Za-z0-9_.-]*)(?:\[[^\]]*\])?==(\d[\w.]*)", path.read_text()):
                assert wanted.get(name.lower()) == version, f"{path.name}: {name}=={version}, pyproject.toml pins {wanted.get(name.lower())}"


# --- filterdb submit: the job it builds --------------------------------------------------------


def test_submit_runs_the_subcommand_as_python_m_flows_cli():
    from flows.jobs import entrypoint

    line = entrypoint(["--", "extract", "my catalog.csv", "--db", "s3://bucket/db"])
    assert shlex.split(line) == ["python", "-m", "flows.cli", "extract", "my catalog.csv", "--db", "s3://bucket/db"]
    assert_parses(shlex.split(line)[3:])


@pytest.mark.parametrize("command", [[], ["--"], ["nonsense"], ["submit", "--", "extract"], ["jobs"],
                                     ["extract", "catalog.csv"], ["shifts", "--db", "d", "--by", "family", "--bogus"]])
def test_submit_refuses_what_is_not_a_job_in_one_line(command):
    from flows.jobs import entrypoint

    with pytest.raises(UsageError) as error:
        entrypoint(command)
    assert str(error.value) and "\n" not in str(error.value)


def test_job_carries_the_project_code_and_with_pip_its_pins(tmp_path):
    from flows.jobs import runtime_env

    env = runtime_env(upload=str(tmp_path), pip=True, env_vars={"AWS_REGION": "us-east-1"})
    assert sorted(Path(p).name for p in env["py_modules"]) == ["flows", "ops"]
    assert all((Path(p) / "__init__.py").is_file() for p in env["py_modules"])
    assert env["working_dir"] == str(tmp_path.resolve())
    assert env["env_vars"]["AWS_REGION"] == "us-east-1"
    pinned = {re.split(r"[\[=<>]", r)[0].lower(): r.split("==")[1] for r in env["pip"]["packages"] if "==" in r}
    assert {name: v for name, v in pins().items() if name in pinned} == pinned  # the installed pins are pyproject's
    assert pinned["torch"] == pins()["torch"] and pinned["ray"] == pins()["ray"]


def test_upload_of_a_missing_folder_is_refused(tmp_path):
    from flows.jobs import runtime_env

    with pytest.raises(UsageError, match="--upload"):
        runtime_env(upload=str(tmp_path / "absent"))


def test_cli_without_a_cluster_address_says_what_to_give(capsys, monkeypatch):
    from flows.cli import main

    for variable in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["jobs"]) == 2
    assert "--address http://HEAD:8265" in capsys.readouterr().err
