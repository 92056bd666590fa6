"""The processes that apply commands: one module per domain, plus the relay and the sweeper."""
