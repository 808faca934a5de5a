"""Live monitoring of the served models: quality against feedback, drift of the inputs."""
