"""The harness behind `lsmha-bench`: latency of committees against CCT-7/3x1."""
