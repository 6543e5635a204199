"""The jobs behind scripts/: each takes the composed Hydra config and runs one command."""
