"""The pydantic models shared by the facade, the consumers and the workers: one home per contract."""
