"""The run form as Prefect renders it (the flow's parameter schema), `spine train --help` and the
README list the settings in one order, as a person fills them, with human titles."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from flows.config import CLI_ONLY, FORM, FORM_ORDER, PipelineConfig, settings_markdown
from flows.train import train_pipeline

README = Path(__file__).resolve().parents[2] / "README.md"


def _form() -> dict:
    schema = train_pipeline.parameters.model_dump()
    return schema["definitions"]["PipelineConfig"]["properties"]


def test_the_form_lists_every_setting_once_in_the_order_a_person_fills_it():
    assert sorted(FORM_ORDER) == sorted(PipelineConfig.model_fields)  # every setting has a place
    properties = _form()
    assert list(properties) == [name for name in FORM_ORDER if name not in CLI_ONLY]
    assert list(properties)[0] == "data_dir"  # the one field everyone changes, first
    assert [p["position"] for p in properties.values()] == list(range(len(properties)))
    assert "run_name" not in properties  # one run name: the Prefect run's own


def test_titles_are_human_with_units_and_no_field_is_a_str_or_none_switch():
    properties = _form()
    sections = {section for section, _ in FORM}
    for name, field in properties.items():
        section, _, title = field["title"].partition(": ")
        assert section in sections and title and title != name, field["title"]
        assert "anyOf" not in field and field.get("type") != "null", name
        assert "maxItems" not in field and "minItems" not in field, name
    assert properties["dispatch_timeout_s"]["title"] == "Dispatch: wait for the GPU runs (seconds)"
    assert "pixels" in properties["store_size"]["title"] and properties["tracking_uri"]["default"] == ""
    assert properties["preprocess_workers"]["default"] == 0


def test_the_forms_empty_values_mean_the_defaults():
    config = PipelineConfig(tracking_uri="", resume="", preprocess_workers=0, run_name="")
    assert config.tracking_uri is None and config.resume is None
    assert config.preprocess_workers is None and config.run_name is None
    assert PipelineConfig(preprocess_workers=3).preprocess_workers == 3


def test_a_setting_left_unset_takes_its_familys_default_and_says_so():
    from spine_model.core.config import FAMILY_DEFAULTS

    properties = _form()
    for name in ("lr", "batch_size"):  # the form's 0: the family's; its title says so
        assert properties[name]["default"] == 0 and "(0: the family's)" in properties[name]["title"], name
    for family, defaults in FAMILY_DEFAULTS.items():
        if family == "localiser":  # trained beside a classifier with the pipeline's localiser_* settings
            continue
        config = PipelineConfig(model_family=family, lr=0, batch_size=0)  # what the form sends
        assert (config.lr, config.batch_size) == (defaults["lr"], defaults["batch_size"]), family
        assert config.family_defaults == ("lr", "batch_size")
        assert config.train_config().lr == defaults["lr"]
    assert FAMILY_DEFAULTS["crops"]["lr"] != FAMILY_DEFAULTS["seed"]["lr"]  # crops does not get the notebook's
    explicit = PipelineConfig(model_family="crops", lr=0.01)  # an explicit value always wins
    assert explicit.lr == 0.01 and explicit.batch_size == 32 and explicit.family_defaults == ("batch_size",)
    localiser = PipelineConfig(model_family="crops").localiser_config()
    assert (localiser.lr, localiser.batch_size) == (1e-3, 8)
    shown = " ".join(CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).output.split())
    assert "unset: the family's (seed 0.01, crops 0.001, localiser 0.001)" in shown
    assert "unset: the family's (seed 64, crops 32, localiser 8)" in shown


def test_spine_train_help_and_the_readme_follow_the_form():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    flags = [f"--{name.replace('_', '-')}" for name in FORM_ORDER if name != "data_dir"]
    positions = [result.output.find(f"│ {flag} ") for flag in flags]  # the option rows
    assert all(p >= 0 for p in positions) and positions == sorted(positions), dict(zip(flags, positions, strict=True))
    for section, _ in FORM:
        assert re.search(rf"─ {section} ─", result.output), section
    assert settings_markdown() in README.read_text(), "README's settings table is not settings_markdown()"


def test_what_the_api_and_the_form_send_passes_prefects_own_parameter_validation():
    from prefect.utilities.schema_tools import validate

    schema = train_pipeline.parameters.model_dump()
    for config in (
        PipelineConfig().model_dump(mode="json", exclude_none=True),  # every setting, as an API caller sends it
        {"data_dir": "/data", "model_family": "crops", "dispatch": "work-pool"},  # prefect.yaml's few
        {"data_dir": "/data", "tracking_uri": "", "preprocess_workers": 0, "run_name": "try-1"},  # form + API
    ):
        validate({"config": config}, schema, raise_on_error=True)
