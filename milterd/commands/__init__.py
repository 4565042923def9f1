"""Sub-commands that are thin wrappers over other modules."""
