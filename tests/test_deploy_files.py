"""The container and cluster files, checked without a Docker engine or a cluster: the compose stack,
the images, the Docker and Kubernetes deployment variants of prefect.yaml, and the Kubernetes base
job template, rendered by Prefect's own templating and accepted by a real Prefect server."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
LONG_RUNNING = ("postgres", "minio", "prefect-server", "mlflow", "cpu-worker", "gpu-worker")
TEMPLATE = json.loads((DOCKER / "kubernetes" / "base-job-template.json").read_text())
PREFECT_YAML = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in PREFECT_YAML["deployments"]}


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def test_the_stack_has_every_service_with_pinned_images():
    assert set(LONG_RUNNING) | {"minio-bucket", "deployer"} <= set(SERVICES)
    for name, service in SERVICES.items():
        image = service["image"]
        assert not image.endswith(":latest") and (":" in image or "@sha256:" in image), (name, image)
        assert re.search(r":(\$\{[A-Z_]+:-[^}]+\}|[\w.-]*\d[\w.-]*)$", image) or "${" in image, (name, image)
    assert SERVICES["prefect-server"]["image"] == "prefecthq/prefect:3.9.1-python3.11"


def test_ports_are_bound_to_this_machine_only():
    published = [(name, port) for name, s in SERVICES.items() for port in s.get("ports", [])]
    assert published, "the UIs are published"
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def test_long_running_services_have_healthchecks_and_wait_for_healthy_dependencies():
    for name in LONG_RUNNING:
        check = SERVICES[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
    for name, service in SERVICES.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            expected = (
                "service_completed_successfully" if dependency in ("minio-bucket", "deployer") else "service_healthy"
            )
            assert condition == {"condition": expected}, (name, dependency)
    assert set(SERVICES["mlflow"]["depends_on"]) == {"postgres", "minio-bucket"}
    assert set(SERVICES["prefect-server"]["depends_on"]) == {"postgres"}
    for worker in ("cpu-worker", "gpu-worker"):
        assert "--with-healthcheck" in SERVICES[worker]["command"]


def test_both_servers_use_postgres_and_mlflow_keeps_artifacts_in_s3():
    prefect = _env(SERVICES["prefect-server"])
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:")
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    mlflow = _env(SERVICES["mlflow"])
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "--allowed-hosts" in SERVICES["mlflow"]["command"]
    bucket = SERVICES["minio-bucket"]["entrypoint"]
    assert "mc mb --ignore-existing" in bucket
    init = (DOCKER / "postgres" / "init-databases.sh").read_text()
    assert "CREATE DATABASE prefect" in init and "CREATE DATABASE mlflow" in init
    mounts = SERVICES["postgres"]["volumes"]
    assert any(m.endswith("/docker-entrypoint-initdb.d/init-databases.sh:ro") for m in mounts)


def test_credentials_come_from_the_env_file_and_every_variable_has_an_example():
    text = (DOCKER / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = (DOCKER / ".env.example").read_text()
    defined = set(re.findall(r"^([A-Z_]+)=", example, flags=re.M))
    assert used <= defined, used - defined
    for name, service in SERVICES.items():
        for key, value in _env(service).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert str(value).startswith("${"), (name, key)
    for url_key in ("PREFECT_API_DATABASE_CONNECTION_URL", "MLFLOW_BACKEND_STORE_URI"):
        url = {**_env(SERVICES["prefect-server"]), **_env(SERVICES["mlflow"])}[url_key]
        assert re.search(r":\$\{[A-Z_]+PASSWORD[^}]*\}@", url), url
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "docker/.env must be ignored by git"


def test_workers_share_the_data_and_outputs_volumes_and_the_gpu_worker_reserves_gpus():
    for worker in ("cpu-worker", "gpu-worker"):
        volumes = SERVICES[worker]["volumes"]
        assert "data:/data:ro" in volumes and "outputs:/app/spine_outputs" in volumes
        assert _env(SERVICES[worker])["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    devices = SERVICES["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert "deploy" not in SERVICES["cpu-worker"]
    assert COMPOSE["volumes"]["outputs"]["name"] == "spine-outputs"
    assert COMPOSE["volumes"]["data"]["name"] == "spine-data"


def test_the_worker_image_is_layered_runs_as_a_user_and_has_a_healthcheck():
    lines = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]
    first = next(i for i, line in enumerate(lines) if line.startswith("FROM"))
    assert re.match(r"FROM python:3\.11\.\d+-slim", lines[first])

    def at(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    # Dependencies (torch) are installed from pyproject.toml alone, before any code is copied.
    assert at("COPY pyproject.toml") < at("RUN mkdir spine_model") < at("COPY --chown=spine:spine spine_model")
    assert 'pip install ".[docker,kubernetes]"' in lines[at("RUN mkdir spine_model") + 1]
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    mlflow = (DOCKER / "mlflow.Dockerfile").read_text()
    assert re.search(r'"mlflow==[\d.]+"', mlflow) and "psycopg2" in mlflow and "boto3" in mlflow
    assert "\nUSER mlflow" in mlflow


def test_docker_deployments_run_in_the_image_and_the_gpu_ones_request_devices():
    for name in ("spine-pipeline-docker", "spine-train-gpu-docker", "spine-localiser-gpu-docker"):
        pool = DEPLOYMENTS[name]["work_pool"]
        variables = pool["job_variables"]
        assert pool["name"] == ("docker-cpu" if name == "spine-pipeline-docker" else "docker-gpu")
        assert variables["image"] == "{{ $SPINE_IMAGE }}"
        assert "spine-outputs:/app/spine_outputs" in variables["volumes"]
        assert "spine-data:/data:ro" in variables["volumes"]
        requests = variables.get("container_create_kwargs", {}).get("device_requests")
        if name == "spine-pipeline-docker":
            assert requests is None
        else:
            assert requests == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    config = DEPLOYMENTS["spine-pipeline-docker"]["parameters"]["config"]
    assert config["gpu_deployment"] == "train-on-gpu/spine-train-gpu-docker"
    assert config["localiser_deployment"] == "train-localiser/spine-localiser-gpu-docker"
    assert config["data_dir"] == "/data"


DOCKER_TEMPLATE = json.loads((DOCKER / "docker-base-job-template.json").read_text())


def test_the_docker_pool_template_passes_the_gpu_device_requests_to_the_worker():
    """docker-base-job-template.json is Prefect's Docker template plus container_create_kwargs (a field
    of prefect-docker's DockerWorkerJobConfiguration since 0.6), which carries the device requests."""
    from prefect.utilities.templating import apply_values, find_placeholders

    variables = DOCKER_TEMPLATE["variables"]["properties"]
    assert {p.name for p in find_placeholders(DOCKER_TEMPLATE["job_configuration"])} <= set(variables)
    for name in ("spine-pipeline-docker", "spine-train-gpu-docker", "spine-localiser-gpu-docker"):
        job = DEPLOYMENTS[name]["work_pool"]["job_variables"]
        assert set(job) <= set(variables), set(job) - set(variables)
    job = DEPLOYMENTS["spine-train-gpu-docker"]["work_pool"]["job_variables"] | {"image": "spine-pipeline:0.1.0"}
    rendered = apply_values(DOCKER_TEMPLATE["job_configuration"], job)
    assert rendered["container_create_kwargs"]["device_requests"][0]["capabilities"] == [["gpu"]]
    assert rendered["volumes"] == ["spine-data:/data:ro", "spine-outputs:/app/spine_outputs"]


def _render(overrides: dict | None = None) -> dict:
    """The job manifest as a worker builds it: the template's variables, defaults or overrides, put in."""
    from prefect.utilities.templating import apply_values

    values = {k: v["default"] for k, v in TEMPLATE["variables"]["properties"].items() if "default" in v}
    values.update({"name": "flow-run", "command": "prefect flow-run execute", **(overrides or {})})
    return apply_values(TEMPLATE["job_configuration"], values)


def test_the_kubernetes_template_requests_gpus_on_the_gpu_nodes_and_mounts_the_volumes():
    from prefect.utilities.templating import find_placeholders

    placeholders = {p.name for p in find_placeholders(TEMPLATE["job_configuration"])}
    assert placeholders <= set(TEMPLATE["variables"]["properties"]), placeholders - set(
        TEMPLATE["variables"]["properties"]
    )
    manifest = _render()["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "spine-data", "readOnly": True}
    assert volumes["outputs"]["persistentVolumeClaim"] == {"claimName": "spine-outputs"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True and "/app/spine_outputs" in mounts and "/dev/shm" in mounts
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["image"] == "spine-pipeline:0.1.0"

    four = _render({"gpu_count": 4, "node_selector": {"pool": "a100"}, "tolerations": []})["job_manifest"]
    pod = four["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["tolerations"] == []


def test_kubernetes_deployments_set_only_template_variables():
    variables = set(TEMPLATE["variables"]["properties"])
    for name in ("spine-pipeline-k8s", "spine-train-gpu-k8s", "spine-localiser-gpu-k8s"):
        job = DEPLOYMENTS[name]["work_pool"]["job_variables"]
        assert set(job) <= variables, set(job) - variables
    cpu = _render(DEPLOYMENTS["spine-pipeline-k8s"]["work_pool"]["job_variables"] | {"image": "x:1"})
    pod = cpu["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 0
    assert pod["nodeSelector"] == {} and pod["tolerations"] == []
    cluster = list(yaml.safe_load_all((DOCKER / "kubernetes" / "cluster.yaml").read_text()))
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in cluster}
    assert {("PersistentVolumeClaim", "spine-data"), ("PersistentVolumeClaim", "spine-outputs"),
            ("ServiceAccount", "spine-jobs"), ("Role", "prefect-worker")} <= kinds  # fmt: skip
    claims = {
        doc["metadata"]["name"]: doc["spec"]["accessModes"] for doc in cluster if doc["kind"] == "PersistentVolumeClaim"
    }
    assert claims["spine-outputs"] == ["ReadWriteMany"]
    workers = [doc for doc in cluster if doc["kind"] == "Deployment"]
    pools = {doc["spec"]["template"]["spec"]["containers"][0]["args"][4] for doc in workers}
    assert pools == {"k8s-cpu", "k8s-gpu"}


@pytest.mark.integration
def test_a_prefect_server_accepts_the_kubernetes_template_as_a_work_pool(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        pool = client.create_work_pool(
            WorkPoolCreate(name="k8s-gpu-template-check", type="kubernetes", base_job_template=TEMPLATE),
            overwrite=True,
        )
        stored = client.read_work_pool(pool.name)
    assert stored.base_job_template["variables"]["properties"]["gpu_count"]["default"] == 1
    assert stored.type == "kubernetes"
