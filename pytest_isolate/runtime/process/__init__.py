"""Processes of the runtime: the launch (fork, placement, pipes), the child stages, the
one select loop, and every message between them (protocol.py)."""
