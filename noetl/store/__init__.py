"""The store: PostgreSQL holds the truth. SQL lives next to the code that runs it."""
