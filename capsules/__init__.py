"""Capsule layers, models, losses and datasets built on the routing registry."""
