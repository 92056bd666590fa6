"""A worker pool: registration and heartbeats on the bus, and the jobs it runs."""
