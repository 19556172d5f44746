"""Registered models: registering, versions, verifying and loading, lineage, reproducing."""
