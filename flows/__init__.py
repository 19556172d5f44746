"""Prefect flows: each reads like the sentence that describes it."""
