#!/usr/bin/env bash
# Debian packages the project needs beyond Python, in two sets named on the command line (default: both):
#   render   Mesa's EGL and software rasteriser: dpmesh-report renders SMPL meshes headless with moderngl over EGL
#            (the demo, the report tests)
#   browser  Chromium and a font: the report's browser test (`make test-slow`)
# `make demo` asks for `render` only, so a fresh machine does not download a browser to run the demo.
# Idempotent: installs only what is missing, so the make targets call it every time at no cost.
# Needs root (or sudo) only when something is missing; set DPMESH_SKIP_SYSTEM_PACKAGES=1 to manage them yourself.
set -euo pipefail

RENDER=(
  libegl1          # the EGL loader (glvnd)
  libegl-mesa0     # Mesa's EGL vendor: surfaceless contexts without a display
  libgl1           # libGL.so.1, which moderngl's context loader opens beside libEGL
  libgl1-mesa-dri  # llvmpipe, Mesa's CPU rasteriser
)
BROWSER=(
  chromium           # headless browser for the report test
  fonts-dejavu-core  # a font for Chromium's text (matplotlib ships its own)
)

PACKAGES=()
for set_name in "${@:-render browser}"; do
  for name in $set_name; do
    case "$name" in
      render) PACKAGES+=("${RENDER[@]}") ;;
      browser) PACKAGES+=("${BROWSER[@]}") ;;
      *) echo "unknown package set '$name' (expected render or browser)" >&2; exit 2 ;;
    esac
  done
done

if [[ "${DPMESH_SKIP_SYSTEM_PACKAGES:-0}" == "1" ]]; then
  exit 0
fi

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "system packages missing (${missing[*]}) and no apt-get: install their equivalents, then set DPMESH_SKIP_SYSTEM_PACKAGES=1" >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then
    sudo=(sudo)
  else
    echo "system packages missing: ${missing[*]}; run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
