"""Prefect flows and the `spine` CLI: composition only, logic lives in spine_model."""

from spine_model.core.settings import apply_offline_defaults

apply_offline_defaults()
