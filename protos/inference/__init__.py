"""KServe v2 / Open Inference Protocol stubs, for the server only.

Clients should use tritonclient.grpc; it registers the same `inference.*` protobuf names, so
the two cannot be imported into one process.
"""
