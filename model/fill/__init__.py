"""Filling the unseen: geometry and appearance for what the memory has never observed (issue 10)."""
