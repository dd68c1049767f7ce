"""Analysis passes over the graph IR: each reads the IR and writes node/graph metadata."""
