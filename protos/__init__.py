"""Protocol buffers and their generated Python stubs (`make protos` regenerates them)."""
