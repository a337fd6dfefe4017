"""Requests in, answers out: the gRPC face of the state, its interceptors, health and TLS."""
