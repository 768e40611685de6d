"""The ProcessFlow gRPC server: validation, transactional store, reads."""
