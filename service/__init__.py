"""mhaserve's server: onnxruntime, numpy and tokenizers behind REST and gRPC. No torch."""

__version__ = "0.1.0"
