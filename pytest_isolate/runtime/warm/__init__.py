"""Warm containers: the zygote that builds them ahead (zygote.py), the caller's pool of them
(pool.py), and the batches in which their ended network namespaces are let go of (nets.py)."""
