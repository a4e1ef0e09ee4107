"""widgetry: a widget catalogue whose writes are commands."""
