"""Backends: the graph IR -> torch modules, exported programs, diagrams. Only these import torch or graphviz."""
