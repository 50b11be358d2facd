"""The host side: what the project leaves on the host, and how a dead run's leftovers go."""
