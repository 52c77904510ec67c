#!/usr/bin/env bash
# Installs what nfnet_jax.onednn builds against (a C++ compiler and oneDNN's headers and library) from
# Debian/Ubuntu packages where it can (root or password-less sudo); elsewhere it says what to install
# and exits 0, since oneDNN is optional: without it the convolutions run on XLA's own kernels.
set -uo pipefail
if [ -e /usr/include/oneapi/dnnl/dnnl.hpp ] && command -v g++ >/dev/null; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
fi
if [ "$sudo" != none ] && command -v apt-get >/dev/null; then
  if $sudo apt-get update -qq >/dev/null && \
     DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq g++ libdnnl-dev >/dev/null; then
    echo "installed g++ and libdnnl-dev (oneDNN) for nfnet_jax.onednn"
    exit 0
  fi
fi
echo "oneDNN not installed (needs apt-get as root: g++ libdnnl-dev); nfnet_jax uses XLA's convolutions" >&2
exit 0
