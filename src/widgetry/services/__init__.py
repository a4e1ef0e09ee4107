"""The one layer that reads and changes widgets: HTTP handlers and workers both call it."""
