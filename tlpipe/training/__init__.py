"""Heads and fine-tuning: the head registry, the ladder, the fine-tuning loop, the model file."""
