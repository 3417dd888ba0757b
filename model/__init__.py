"""The PyTorch side of mhaserve: encoder, weights, tokenizer, export, evaluation, training.

Never imported by the server process.
"""
