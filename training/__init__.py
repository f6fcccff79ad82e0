"""training: the `dali-train` job (model, mixing, AMP step, outputs). Imports dali_pipes, never the reverse."""
