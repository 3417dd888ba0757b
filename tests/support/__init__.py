"""What the tests share besides fixtures: the server launcher, the in-process reference, one HTTP
client, one float32 decoder and the Prometheus parser. The fixtures stay in tests/conftest.py."""
