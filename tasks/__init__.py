"""Prefect tasks: each wraps one library step with retries, logging and its MLflow child run."""
