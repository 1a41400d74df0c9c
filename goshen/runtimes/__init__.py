"""Model runtimes shared by serving and the pipelines."""
