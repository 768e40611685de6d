"""Generated gRPC and protobuf modules for processflow.v1 (tools/gen_protos.py)."""
