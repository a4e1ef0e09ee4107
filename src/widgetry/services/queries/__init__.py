"""SQL statements per aggregate, built once at import and reused: the hot paths compile nothing per call."""
