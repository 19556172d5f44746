"""What the embeddings say about the data: label issues, near-copies, outliers, drift."""
