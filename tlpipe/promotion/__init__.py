"""Who is champion: held-out scores, the gate, decisions, alias moves, lock, rollback, retrain."""
