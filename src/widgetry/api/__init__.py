"""HTTP: routers and handlers. They translate requests into service calls and results into responses."""
