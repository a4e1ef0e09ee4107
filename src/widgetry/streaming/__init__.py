"""Events on the Redis stream: the publisher writes them, the hub fans them out to SSE subscribers."""
