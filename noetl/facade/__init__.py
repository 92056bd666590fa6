"""The HTTP facade: validates, publishes, waits for the reply, maps it to the documented response."""
