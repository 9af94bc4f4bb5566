#!/usr/bin/env bash
# make board-check: prove the edge runtime on aarch64 (Raspberry Pi 4/5 class) under qemu-user emulation.
#
# Builds a Debian bookworm arm64 root (debootstrap --foreign + qemu-user-static second stage), installs the
# light runtime's aarch64 wheels from the package registry into it, then inside it runs the edge test suite,
# a short marsseg-edge run on the bundled clip, and a bit-level comparison of int8 masks against this x86
# host. Timings under emulation mean nothing; correctness does.
#
# Pitfalls handled (found on this machine): qemu's default CPU model ("max") makes XNNPACK's int8 kernels
# give wrong results, so a real board core is emulated (QEMU_CPU=cortex-a72: Pi 4; cortex-a76: Pi 5);
# XNNPACK only switches on when the root shows a believable /proc/cpuinfo and
# /sys/devices/system/cpu/{possible,present,online} (the host's real /sys must not be bound: Python crashes).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${BOARD_ROOT:-.board/root}
CPU=${QEMU_CPU:-cortex-a72}
PY=${PY:-.venv/bin/python}
LOG=${BOARD_LOG:-bench/results/board-check-$(date +%Y%m%d).log}
mkdir -p "$(dirname "$LOG")" .board
exec > >(tee "$LOG") 2>&1
echo "== board check: $CPU, root $ROOT, $(date -u)"

need=(debootstrap qemu-user-static binfmt-support)
missing=(); for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${missing[@]}"; fi

if [ ! -x "$ROOT/usr/bin/python3" ]; then
  echo "== debootstrap arm64 bookworm (first + second stage)"
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOT" http://deb.debian.org/debian
  cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  QEMU_CPU=$CPU chroot "$ROOT" /debootstrap/debootstrap --second-stage
fi

echo "== aarch64 wheels from the registry"
WH=.board/wheels; rm -rf "$WH"; mkdir -p "$WH"
"$PY" -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
  --platform manylinux_2_17_aarch64 --python-version 3.11 --implementation cp -d "$WH" \
  "ai-edge-litert==2.3.0" "numpy>=2" opencv-python-headless pyserial pytest hypothesis
"$PY" -m pip wheel -q --no-deps -w "$WH" .
ls "$WH"

echo "== fake board /proc/cpuinfo and /sys cpu topology ($CPU, 4 cores)"
part=$([ "$CPU" = cortex-a76 ] && echo 0xd0b || echo 0xd08)
mkdir -p "$ROOT/board/sys/devices/system/cpu" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/work"
for f in possible present online; do echo "0-3" > "$ROOT/board/sys/devices/system/cpu/$f"; done
: > "$ROOT/board/cpuinfo"
for i in 0 1 2 3; do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 3\n\n' "$i" "$part" >> "$ROOT/board/cpuinfo"
done
cleanup() {
  for m in sys/devices/system/cpu proc/cpuinfo dev/pts dev proc; do umount -l "$ROOT/$m" 2>/dev/null || true; done
}
trap cleanup EXIT
mount -t proc proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"  # the serial tests use pseudo-terminals
mount --bind "$ROOT/board/cpuinfo" "$ROOT/proc/cpuinfo"
mkdir -p "$ROOT/sys/devices/system/cpu"
mount --bind "$ROOT/board/sys/devices/system/cpu" "$ROOT/sys/devices/system/cpu"
rm -rf "$ROOT/work"/* 2>/dev/null || true
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$ROOT/work"
mkdir -p "$ROOT/work/.wheels"; cp "$WH"/*.whl "$ROOT/work/.wheels/"

echo "== x86 reference masks"
"$PY" - <<'PYEOF'
import numpy as np
from marsseg.edge.cli import bundled
from marsseg.edge.model import TileModel
with np.load(bundled("demo_clip.npz")) as z:
    frames = z["frames"]
tiles = np.concatenate([frames[:, :64], frames[:, 64:]])
m = TileModel(bundled("model_int8.tflite"))
np.savez(".board/root/work/x86_reference.npz", tiles=tiles, probs=m.predict(tiles).copy())
PYEOF

echo "== inside the arm64 root"
QEMU_CPU=$CPU chroot "$ROOT" /usr/bin/env -u PIP_FIND_LINKS /bin/bash -euo pipefail -c '
cd /work
uname -m; python3 --version; grep -m1 "CPU part" /proc/cpuinfo
python3 -m venv /opt/venv
/opt/venv/bin/pip install -q --no-index --find-links .wheels ai-edge-litert numpy opencv-python-headless pyserial pytest hypothesis
/opt/venv/bin/pip install -q --no-index --no-deps .wheels/marsseg-*.whl
/opt/venv/bin/python -c "import numpy, cv2, ai_edge_litert; print(\"numpy\", numpy.__version__, \"opencv\", cv2.__version__)"
/opt/venv/bin/python - <<PYEOF
import numpy as np
from marsseg.edge.cli import bundled
from marsseg.edge.model import TileModel
ref = np.load("x86_reference.npz")
m = TileModel(bundled("model_int8.tflite"))
probs = m.predict(ref["tiles"])
agree = (probs.argmax(-1) == ref["probs"].argmax(-1)).mean()
steps = np.abs(probs - ref["probs"]).max() / m.meta.output_quant.scale
n = len(ref["tiles"])
print(f"aarch64 vs x86 int8 class agreement: {agree:.6f} on {n} tiles; max output diff {steps:.1f} int8 steps")
assert agree >= 0.999, "aarch64 int8 masks disagree with x86"
PYEOF
/opt/venv/bin/marsseg-edge --source demo --output /tmp/demo --summary --log-level WARNING
ls /tmp/demo | head -3
/opt/venv/bin/python -m pytest -q -p no:cacheprovider tests/test_tiling.py tests/test_protocol.py tests/test_terrain.py \
  tests/test_interpreter.py tests/test_edge_cli.py tests/test_sources.py tests/test_evaluate.py tests/test_no_tensorflow.py \
  tests/test_serial_link.py tests/test_metrics.py
'
echo "== board check passed ($CPU)"
