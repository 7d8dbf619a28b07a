"""Chat side of claybot: config, the shared request flow, front ends and the command line."""
