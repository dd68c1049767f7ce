"""graphres: a declarative model-graph compiler for ResNet-style backbones."""
