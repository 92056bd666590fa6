"""The bus: subjects, streams, the envelope, and request/reply over JetStream."""
