"""A small synthetic SMPL-like body model (no licensed data) for the tiny configuration, tests and demos."""

from __future__ import annotations

import numpy as np

from dpmesh_core.body_model import SMPLData


def synthetic_smpl_data(num_vertices: int = 64, seed: int = 0) -> SMPLData:
    """Random but well-formed SMPL arrays on `num_vertices` vertices.

    Vertices are spread over a body-sized box (≈ 0.5 × 1.7 × 0.3 m); each of the 24 joints regresses from 4
    vertices with weights summing to 1; skinning weights are non-negative and sum to 1 per vertex.
    """
    rng = np.random.default_rng(seed)
    n = num_vertices
    v_template = (rng.uniform(-0.5, 0.5, size=(n, 3)) * np.array([0.5, 1.7, 0.3])).astype(np.float32)
    shapedirs = (rng.normal(scale=0.01, size=(n, 3, 10))).astype(np.float32)
    posedirs = (rng.normal(scale=0.001, size=(n, 3, 207))).astype(np.float32)
    j_regressor = np.zeros((24, n), dtype=np.float32)
    for j in range(24):
        idx = rng.choice(n, size=4, replace=False)
        j_regressor[j, idx] = rng.dirichlet(np.ones(4))
    weights = rng.dirichlet(np.ones(24) * 0.3, size=n).astype(np.float32)
    faces = np.stack([rng.choice(n, size=3, replace=False) for _ in range(2 * n)]).astype(np.int64)
    return SMPLData(v_template, shapedirs, posedirs, j_regressor, weights, faces)
