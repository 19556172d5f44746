"""Heads and fine-tuning: the head registry, the ladder, the fine-tuning search and loop, the
model file."""
