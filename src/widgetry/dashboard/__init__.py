"""The live dashboard at `/`: widgets, commands and events as they happen, and forms that send the API's own
commands through the API's own handlers, registered again under a router that signs in with a session."""
