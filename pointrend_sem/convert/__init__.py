"""Checkpoint converters: other codebases' weights renamed into this project's model keys."""
