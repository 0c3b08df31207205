"""Hydra config groups shipped with the package (``pkg://distill.conf``); importing it registers the
structured configs (``trainer/schema``) that conf/trainer/default.yaml starts from."""

from distill import schema  # noqa: F401
