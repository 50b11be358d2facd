"""Kernel steps: the functions that build a container's inside, one kernel job each.

Rule: modules here import only leaves (syscalls, errors, and mountinfo, which mounts nothing);
they never decide an order: plan.py lists the steps, setup.py runs them (a test enforces it).
"""
