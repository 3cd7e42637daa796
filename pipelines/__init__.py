"""Beam pipelines of the DPMesh pseudo-labeling project: sharding, labeling, their configs and I/O.

Importing this package (and the sharding job) must not import torch: the CPU-only sharding
workers do not carry the GPU stack.
"""

__version__ = "0.1.0"
