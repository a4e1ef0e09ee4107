"""What a widget is and what can happen to it."""
