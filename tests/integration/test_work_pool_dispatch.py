"""End to end with real servers: Prefect server + MLflow server + process workers on loopback, both
servers backed by a real PostgreSQL server (the topology of docker/compose.yaml, without Docker).

The parent `spine-pipeline` deployment runs on the `cpu` pool's worker and dispatches training to
the `spine-train-gpu` deployment, which the `gpu` pool's worker runs in its own process; the runs,
the MLflow run and the registry entries are then read back from PostgreSQL itself.

PostgreSQL comes from Debian's package (`make test` installs it as root, as on CI). Without it and
without root to install it, the stack falls back to sqlite and only the PostgreSQL read-back skips.
"""

from __future__ import annotations

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.config import PipelineConfig
from spine_model.core.catalog import Workspace
from tests.conftest import TINY_TRAIN
from tests.helpers import assert_complete_mlflow_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dispatched(stack, tiny_data, module_tmp):
    """One pipeline run through the stack: (config, parent flow run, child runs, localiser runs)."""
    # A run named like the localiser's job: the jobs are told apart by what they train, not by folder names.
    config = PipelineConfig(
        data_dir=str(tiny_data), workdir=str(module_tmp.mktemp("dispatch") / "out"),
        tracking_uri=stack.mlflow_url, dispatch="work-pool", dispatch_timeout_s=600, model_family="crops",
        run_name="localiser", **TINY_TRAIN,
    )  # fmt: skip
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        parent = run_deployment(
            "train-pipeline/spine-pipeline", parameters={"config": config.model_dump(mode="json", exclude_none=True)},
            timeout=900, as_subflow=False,
        )  # fmt: skip
        assert parent.state.is_completed(), f"{parent.state}; logs in {stack.state_dir / 'logs'}"
        assert parent.work_pool_name == "cpu"
        with get_client(sync_client=True) as client:
            of_parent = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id]))
            children, localisers = (
                client.read_flow_runs(
                    flow_run_filter=of_parent,
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])),
                )
                for name in ("spine-train-gpu", "spine-localiser-gpu")
            )
            on_parent = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[parent.id]))
            artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=on_parent) if a.key}
    return config, parent, children, localisers, artifacts


def test_pipeline_dispatches_training_to_the_gpu_pool(stack, dispatched):
    config, parent, children, localisers, _ = dispatched
    assert len(children) == 1 and len(localisers) == 1, stack.dead()
    child = children[0]
    for started in (child, localisers[0]):  # classifier and localiser, side by side on the gpu pool
        assert started.state.is_completed()
        assert started.work_pool_name == "gpu"
        assert started.infrastructure_pid  # set by the process worker that started it
        assert started.parent_task_run_id is not None  # tracked as a subflow of the parent

    client = mlflow.MlflowClient(stack.mlflow_url)
    experiment = client.get_experiment_by_name("rsna-lumbar-spine")
    runs = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{parent.id}'")
    localiser_runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 1 and len(localiser_runs) == 1
    run = runs[0]
    assert localiser_runs[0].data.tags["mlflow.parentRunId"] == run.info.run_id
    assert localiser_runs[0].data.tags["prefect.train_flow_run_id"] == str(localisers[0].id)
    assert run.data.tags["localiser"] == "yes"
    assert run.data.tags["prefect.train_flow_run_id"] == str(child.id)
    assert run.data.tags["prefect.deployment"] == "spine-pipeline"
    assert run.data.tags["prefect.train_deployment"] == "spine-train-gpu"
    assert run.data.tags["prefect.ui_link"].startswith(stack.ui_url)
    run_dir = Workspace(config.workdir).run(run.info.run_name).root
    assert_complete_mlflow_run(stack.mlflow_url, run.info.run_id, config, str(run_dir))
    assert not stack.dead(), stack.dead()


def test_the_runs_and_the_registry_are_in_postgres(postgres, stack, dispatched):
    if postgres is None:
        pytest.skip("no PostgreSQL server binaries here and not root to install them (`make postgres`)")
    config, parent, children, *_ = dispatched
    # Prefect's own tables: the parent and the child flow runs, completed.
    states = dict(postgres.query("prefect", "SELECT id::text, state_type FROM flow_run"))
    assert states[str(parent.id)] == "COMPLETED" and states[str(children[0].id)] == "COMPLETED"
    deployments = {name for (name,) in postgres.query("prefect", "SELECT name FROM deployment")}
    assert {"spine-pipeline", "spine-train-gpu", "spine-localiser-gpu", "compare-models"} <= deployments
    # MLflow's tables: the run, its per-epoch metrics, and the registry's version with its alias.
    runs = postgres.query(
        "mlflow", "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'prefect.flow_run_id' AND t.value = %s", (str(parent.id),),
    )  # fmt: skip
    assert len(runs) == 2 and {status for _, status in runs} == {"FINISHED"}  # classifier and localiser
    steps = postgres.query("mlflow", "SELECT DISTINCT step FROM metrics WHERE key = 'val_loss' AND run_uuid = ANY(%s)",
                           ([run_id for run_id, _ in runs],))  # fmt: skip
    assert sorted(step for (step,) in steps) == list(range(1, config.epochs + 1))
    versions = postgres.query("mlflow", "SELECT name, version, run_id FROM model_versions")
    assert any(name == config.model_name and run_id in dict(runs) for name, _, run_id in versions), versions
    champions = postgres.query("mlflow", "SELECT name FROM registered_model_aliases WHERE alias = 'champion'")
    assert (config.model_name,) in champions, champions


def test_the_run_a_person_started_shows_the_training_progress_and_links_the_children(dispatched):
    """Training ran as child flow runs on the gpu pool; the parent shows their epochs and summary."""
    config, parent, children, localisers, artifacts = dispatched
    progress = artifacts["spine-training-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert progress.description.startswith(f"classifier: epoch {config.epochs}/{config.epochs}, validation loss")
    assert float(artifacts["spine-localiser-progress"].data) == 100.0
    summary = artifacts["spine-training-summary"].data
    assert "prior" in summary.lower() and "**MLflow:**" in summary
    assert f"**Trained by (classifier):** [{children[0].name}]" in summary and str(children[0].id) in summary
    assert str(localisers[0].id) in summary
