#!/usr/bin/env bash
# Builds cpp/build/segdeploy_infer (and the segdeploy::Segmenter library) on Debian; elsewhere (Ubuntu, other
# distributions) with ONNXRUNTIME_ROOT naming an ONNX Runtime SDK.
#
#  1. System packages: cmake g++ libopencv-dev nlohmann-json3-dev must be installed (this script never installs
#     anything: it names the missing ones and the apt-get line, and exits 3).
#  2. ONNX Runtime SDK, unless ONNXRUNTIME_ROOT names one: headers from Debian 13's libonnxruntime-dev .deb
#     (downloaded through a private apt configuration and unpacked with dpkg -x: nothing is installed) and the
#     library libonnxruntime.so.1.x of the onnxruntime Python wheel ($PYTHON, default python3); cached in
#     cpp/.deps/. The C API is versioned: a program built on older headers runs on a newer library.
#  3. cmake configure + build in cpp/build (incremental: a second run only rebuilds what changed).
#
# Quiet unless something fails. Exit 0 built, 1 failed, 3 prerequisites missing and not installable here.
# Environment: ONNXRUNTIME_ROOT (own SDK), PYTHON, SEGDEPLOY_CPP_BUILD_DIR (default cpp/build),
# SEGDEPLOY_DEBIAN_MIRROR (archive URI for the trixie .deb; default: the Debian mirror apt already uses),
# SEGDEPLOY_CMAKE_ARGS (more cmake -D options, split on spaces, e.g. "-DSEGDEPLOY_BUILD_TESTS=ON").
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build_dir=${SEGDEPLOY_CPP_BUILD_DIR:-$here/build}
deps=$here/.deps
python=${PYTHON:-python3}
log_dir=$deps/logs
mkdir -p "$log_dir"

say() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$1" >&2; exit "${2:-1}"; }
# Runs a command with its output in a log file, shown only when it fails.
quiet() {
  local name=$1; shift
  if ! "$@" >"$log_dir/$name.log" 2>&1; then
    tail -n 40 "$log_dir/$name.log" >&2
    die "$name failed (full log: $log_dir/$name.log)"
  fi
}

# ------------------------------------------------------------------------------------------- system packages
packages=(cmake g++ libopencv-dev nlohmann-json3-dev)
if command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    die "missing packages: ${missing[*]} (install them: apt-get install ${missing[*]})" 3
  fi
fi
command -v cmake >/dev/null || die "cmake is missing" 3
command -v c++ >/dev/null || command -v g++ >/dev/null || die "no C++ compiler (c++ or g++)" 3

# ------------------------------------------------------------------------------------------- ONNX Runtime SDK
# The URI of the Debian archive this machine's apt uses, so the trixie .deb comes from the same mirror.
debian_mirror() {
  if [[ -n ${SEGDEPLOY_DEBIAN_MIRROR:-} ]]; then echo "$SEGDEPLOY_DEBIAN_MIRROR"; return; fi
  local codename
  # shellcheck disable=SC1091  # the machine's own file
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  [[ -n $codename ]] || return 0
  {
    # one-line style: deb [options] URI SUITE COMPONENTS...
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk -v c="$codename" '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                                          if ($(i + 1) == c) print $i }'
    # deb822 style: stanzas with URIs: and Suites: fields
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
      awk -v c="$codename" 'BEGIN { RS = "" } { uri = ""; ok = 0; n = split($0, lines, "\n")
          for (j = 1; j <= n; j++) { m = split(lines[j], f, /[ \t]+/)
            if (f[1] == "URIs:") uri = f[2]
            if (f[1] == "Suites:") for (k = 2; k <= m; k++) if (f[k] == c) ok = 1 }
          if (ok && uri != "") print uri }'
  } | head -n 1
}

fetch_headers() {  # unpacks libonnxruntime-dev's include/onnxruntime/ into $1
  local dest=$1 apt_dir=$deps/apt keyring=/usr/share/keyrings/debian-archive-keyring.gpg mirror deb
  [[ -f $keyring ]] || die "no $keyring to verify Debian's trixie archive: set ONNXRUNTIME_ROOT to an SDK" 3
  mirror=$(debian_mirror)
  [[ -n $mirror ]] || die "cannot tell which Debian mirror apt uses; set SEGDEPLOY_DEBIAN_MIRROR or ONNXRUNTIME_ROOT" 3
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/parts" "$apt_dir/debs"
  echo "deb [signed-by=$keyring] $mirror trixie main" >"$apt_dir/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/parts"
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Acquire::Languages=none")
  # apt drops to the _apt user for downloads, which cannot write into a root-owned checkout.
  [[ $(id -u) == 0 ]] && opts+=(-o "APT::Sandbox::User=root")
  quiet apt-trixie-update apt-get -q "${opts[@]}" update
  (cd "$apt_dir/debs" && rm -f ./*.deb && quiet apt-trixie-download apt-get -q "${opts[@]}" download libonnxruntime-dev)
  deb=$(ls "$apt_dir"/debs/libonnxruntime-dev_*.deb)
  rm -rf "$apt_dir/unpacked" && dpkg -x "$deb" "$apt_dir/unpacked"
  mkdir -p "$dest" && cp -r "$apt_dir/unpacked/usr/include/onnxruntime/." "$dest/"
  basename "$deb" >"$dest/.from"
  rm -rf "$apt_dir/lists" "$apt_dir/cache" "$apt_dir/unpacked"  # 20 MB of package lists, needed once
}

if [[ -n ${ONNXRUNTIME_ROOT:-} ]]; then
  sdk=$ONNXRUNTIME_ROOT
else
  wheel_lib=$("$python" -c 'import glob, os, onnxruntime
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1.*")))
print(libs[-1] if libs else "")' 2>/dev/null) ||
    die "$python cannot import onnxruntime: install the onnxruntime wheel or set ONNXRUNTIME_ROOT" 3
  [[ -n $wheel_lib ]] || die "the onnxruntime wheel of $python has no capi/libonnxruntime.so.1.*" 3
  version=${wheel_lib##*/libonnxruntime.so.}
  sdk=$deps/onnxruntime-$version
  if [[ ! -f $sdk/.complete ]]; then
    say "preparing ONNX Runtime SDK $version in ${sdk#"$here"/}"
    rm -rf "$sdk"
    [[ -f $deps/include/.from ]] || fetch_headers "$deps/include"  # headers are shared by library versions
    mkdir -p "$sdk/lib"
    cp -r "$deps/include" "$sdk/include"
    cp "$wheel_lib" "$sdk/lib/"
    ln -sf "libonnxruntime.so.$version" "$sdk/lib/libonnxruntime.so.1"  # the library's SONAME
    ln -sf "libonnxruntime.so.1" "$sdk/lib/libonnxruntime.so"           # what the linker looks for
    printf 'headers: %s\nlibrary: %s\n' "$(cat "$deps/include/.from")" "$wheel_lib" >"$sdk/.complete"
  fi
fi

# ------------------------------------------------------------------------------------------- build
read -r -a extra_args <<<"${SEGDEPLOY_CMAKE_ARGS:-}"
quiet cmake-configure cmake -S "$here" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DONNXRUNTIME_ROOT="$sdk" \
  "${extra_args[@]}"
quiet cmake-build cmake --build "$build_dir" --parallel "$(nproc 2>/dev/null || echo 2)"
say "built ${build_dir}/segdeploy_infer"
