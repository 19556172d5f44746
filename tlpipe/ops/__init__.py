"""Running it all: MLflow tracking, project init, the DVC stage entry, processes, the team stack."""
