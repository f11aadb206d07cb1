"""The KServe v2 gRPC protocol's messages: kserve_v2.proto, compiled to kserve_v2_pb2.py when
the package is built (setup.py). Imported only by the gRPC service (`lsmha-serve --grpc-port`)."""
