"""What operators watch: Prometheus metrics, structured logs, traces and the queue's state."""
