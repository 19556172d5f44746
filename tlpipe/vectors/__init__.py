"""Everything that decides a feature vector, and only that: every file here is in its cache key."""
