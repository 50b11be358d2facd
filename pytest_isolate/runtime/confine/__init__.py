"""Confinement of a container's workload: capabilities and a seccomp filter (policy.py, pure;
syscall_tables.py, generated); kernel/confine.py applies them."""
