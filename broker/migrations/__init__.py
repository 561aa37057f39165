"""Alembic migrations of the jitgate store (see env.py)."""
