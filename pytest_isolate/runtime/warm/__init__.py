"""Warm containers: the zygote that builds them ahead (zygote.py) and the caller's pool of
them (pool.py)."""
