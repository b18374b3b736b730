"""Off-policy estimators: each computes per-round values; the base supplies estimate() and intervals."""
