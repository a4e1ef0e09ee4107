"""`widgetry.workers`: the SAQ job functions and the queue/worker settings, installed under widgetry's name from this
top-level folder. They call the services; the services and the domain never import them."""
