"""Research methods built on the public core API, one module per method."""
