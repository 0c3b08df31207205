"""Hydra config groups shipped with the package (``pkg://distill.conf``)."""
