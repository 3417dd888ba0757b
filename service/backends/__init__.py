"""Runtimes behind one small protocol: the engine batches, a backend computes."""
