"""What a person reads in the Prefect UI: the run's summary as a Markdown artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from spine_model.core.catalog import RunFolder


@task(name="publish-summary")
def publish_summary_task(
    run_dir: str,
    mlflow_link: str,
    model_uris: dict[str, str] | None = None,
    localiser_dir: str | None = None,
    children: dict[str, str] | None = None,
) -> str:
    """A Markdown artifact with scores, prior baseline, per-condition table, the localiser's table
    when one was trained, the flow runs that trained (`children`: label -> link) and where to look next."""
    folder = RunFolder(run_dir)
    summary = folder.evaluation_files()["summary_markdown"].read_text()
    if localiser_dir is not None:
        table = RunFolder(localiser_dir).localiser_evaluation_files()["summary_markdown"].read_text()
        summary += f"\n\n## Localiser (validation studies)\n\n{table}"
    markdown = (
        f"# Spine training run `{folder.name}`\n\n{summary}\n\n"
        f"**MLflow:** {mlflow_link}\n\n**Run folder:** `{run_dir}`\n"
        + "".join(f"\n**Trained by ({label}):** {link}\n" for label, link in (children or {}).items())
        + "".join(f"\n**{name}:** `{uri}`\n" for name, uri in (model_uris or {}).items())
    )
    create_markdown_artifact(markdown, key="spine-training-summary", description="validation scores")
    return markdown
