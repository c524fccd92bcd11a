# Shared by scripts/demo and scripts/test: Debian packages and the CMake configure step.
# shellcheck shell=bash

# Debian 12 packages the build needs (no downloads at build time beyond these).
ADA_APT_PACKAGES=(cmake make g++ libopenblas-openmp-dev catch2 libbenchmark-dev libcli11-dev
                  nlohmann-json3-dev)

# Installs whatever of ADA_APT_PACKAGES (and the packages named as arguments) is missing (as root,
# or through sudo).
ada_install_deps() {
  local missing=()
  for p in "${ADA_APT_PACKAGES[@]}" "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ada_configure BUILD_DIR [cmake args...]
ada_configure() {
  local dir=$1
  shift
  mkdir -p "$dir"
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >"$dir/configure.log" 2>&1 || {
    cat "$dir/configure.log"
    return 1
  }
  grep -E "BLAS:|CUDA compiler identification|WARNING" "$dir/configure.log" || true
}

ada_jobs() { nproc 2>/dev/null || echo 2; }
