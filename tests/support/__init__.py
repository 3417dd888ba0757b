"""What the tests share besides fixtures: the server launcher, the in-process reference (and the
fake backend's, for `--backend fake` servers), one HTTP client, tritonclient's helpers, one float32
decoder and the Prometheus parser. The fixtures stay in tests/conftest.py."""
