"""mhaserve.v1: the encoder service (encoder.proto) and its generated stubs."""
