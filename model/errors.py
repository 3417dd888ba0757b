"""ModelError: an expected failure (bad file, bad config) reported as one line, no traceback."""


class ModelError(Exception):
    pass
