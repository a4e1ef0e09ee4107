"""SAQ job functions and the queue/worker settings. Imports widgetry; widgetry's layers never import this."""
