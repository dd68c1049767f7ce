"""Integrations: graphres backbones inside other frameworks (OpenMMLab's registries, torchvision's
detectors). Each submodule imports its framework; ``import graphres`` imports none of them."""
