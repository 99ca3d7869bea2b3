"""End to end with real servers: Prefect server + MLflow server + process workers on loopback.

The parent `spine-pipeline` deployment runs on the `cpu` pool's worker and dispatches training to
the `spine-train-gpu` deployment, which the `gpu` pool's worker runs in its own process.
"""

from __future__ import annotations

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.config import PipelineConfig
from flows.stack import LocalStack, free_port
from spine_model.catalog import Workspace
from tests.conftest import TINY_TRAIN
from tests.helpers import assert_complete_mlflow_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    local = LocalStack(
        tmp_path_factory.mktemp("stack"), prefect_port=free_port(), mlflow_port=free_port(), worker_poll_s=2
    )
    try:
        local.start()
        yield local
    finally:
        local.stop()


def test_pipeline_dispatches_training_to_the_gpu_pool(stack, tiny_data, tmp_path):
    config = PipelineConfig(
        data_dir=str(tiny_data), workdir=str(tmp_path / "out"), tracking_uri=stack.mlflow_url,
        dispatch="work-pool", dispatch_timeout_s=600, model_family="crops", **TINY_TRAIN,
    )  # fmt: skip
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        parent = run_deployment(
            "train-pipeline/spine-pipeline", parameters={"config": config.model_dump(mode="json")},
            timeout=900, as_subflow=False,
        )  # fmt: skip
        assert parent.state.is_completed(), f"{parent.state}; logs in {stack.state_dir / 'logs'}"
        assert parent.work_pool_name == "cpu"
        with get_client(sync_client=True) as client:
            children, localisers = (
                client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
                for name in ("spine-train-gpu", "spine-localiser-gpu")
            )
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
