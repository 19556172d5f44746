"""The team stack on loopback, a module per server: PostgreSQL, MLflow, Prefect; then the whole."""
