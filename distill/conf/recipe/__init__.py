"""Ready experiments, one YAML per recipe (``distill recipes`` lists them)."""
