"""Learned reward signals: completion, skip and listening-time models, and the composite reward."""
