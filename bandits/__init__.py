"""Contextual bandit policies as pure JAX functions, slate re-ranking, and off-policy evaluation."""
