#!/usr/bin/env bash
# Builds and pushes the worker images (infra/docker/) from the repository root.
#   infra/build_images.sh <registry>          e.g. us-central1-docker.pkg.dev/my-project/dpmesh
# Tags are the project version; needs a Docker engine with BuildKit (not available on the CI machine).
set -euo pipefail
registry="${1:?usage: infra/build_images.sh <registry>}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
for kind in gpu cpu; do
  DOCKER_BUILDKIT=1 docker build -f "infra/docker/Dockerfile.${kind}" -t "${registry}/dpmesh-${kind}:${version}" .
  docker push "${registry}/dpmesh-${kind}:${version}"
done
echo "export DPMESH_WORKER_IMAGE=${registry}/dpmesh-gpu:${version}   # dpmesh-label"
echo "# dpmesh-shard: runner.image=${registry}/dpmesh-cpu:${version}"
