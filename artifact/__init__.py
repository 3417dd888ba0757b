"""The artifact contract: `model/` writes an exported model directory, `service/` reads it.

Neither side imports the other; both import this package.
"""
