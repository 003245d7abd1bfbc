"""Data: sources (fetch + parse public formats), labels, histories, splits, validation."""
