"""Migration scripts, written by hand to match broker/store/models.py."""
