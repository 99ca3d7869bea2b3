"""Thin Prefect tasks over spine_model: retries, caching, artifacts, logging; no ML logic."""

from spine_model.core.settings import apply_offline_defaults

apply_offline_defaults()
