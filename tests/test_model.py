import math
import os
import subprocess
import sys
import time

import pytest
import torch

from coopstance.config import LossArgs, ModelArgs
from coopstance.model import ModelUnavailableError, ensure_model_available, loss_weights, multitask_loss


def test_loss_equals_hand_computed_value():
    # 2 topics + 3 stances; one example per row
    logits = torch.tensor([[2.0, -1.0, 1.0, 0.0, -1.0], [0.0, 0.5, 0.0, 2.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])  # topics..., stance index

    def bce(x, y):
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))

    topic = (bce(2.0, 1) + bce(-1.0, 0) + bce(0.0, 0) + bce(0.5, 1)) / 4
    ce0 = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(0.0) + math.exp(-1.0)))
    ce1 = -math.log(math.exp(2.0) / (math.exp(0.0) + math.exp(2.0) + math.exp(0.0)))
    stance = (ce0 + ce1) / 2
    loss = multitask_loss(logits, labels, num_topics=2, topic_weight=0.7, stance_weight=1.3)
    assert loss.item() == pytest.approx(0.7 * topic + 1.3 * stance, rel=1e-6)


def test_weighted_loss_matches_hand_computation():
    logits = torch.tensor([[0.0, 1.0, 0.0]])  # 1 topic, 2 stances
    labels = torch.tensor([[1.0, 1.0]])
    pos_weight, class_weight = torch.tensor([3.0]), torch.tensor([1.0, 2.0])
    topic = 3.0 * -math.log(0.5)
    stance = -math.log(math.exp(0.0) / (math.exp(1.0) + math.exp(0.0)))  # weighted mean of one item = plain CE
    loss = multitask_loss(logits, labels, 1, pos_weight, class_weight)
    assert loss.item() == pytest.approx(topic + stance, rel=1e-6)


def test_stance_label_smoothing_matches_hand_computation():
    logits = torch.tensor([[0.0, 1.0, 0.0, -1.0]])  # 1 topic, 3 stances
    labels = torch.tensor([[0.0, 1.0]])
    log_p = [x - math.log(math.exp(1.0) + math.exp(0.0) + math.exp(-1.0)) for x in (1.0, 0.0, -1.0)]
    eps = 0.3  # target: 1 - eps on the gold class plus eps / 3 on every class
    stance = -((1 - eps) * log_p[1] + eps / 3 * sum(log_p))
    loss = multitask_loss(logits, labels, 1, topic_weight=0.0, stance_weight=1.0, stance_label_smoothing=eps)
    assert loss.item() == pytest.approx(stance, rel=1e-6)
    with pytest.raises(Exception, match=r"loss.stance_label_smoothing=1.0 must be in \[0, 1\)"):
        LossArgs(stance_label_smoothing=1.0)


def test_loss_weights_from_frequencies(schema):
    rows = [[1.0] + [0.0] * 9, [0.0] * 10, [0.0] * 10, [0.0] * 10]
    pos, cls = loss_weights(rows, [0, 0, 0, 1], schema, LossArgs(max_weight=5.0))
    assert pos[0].item() == pytest.approx(3.0)  # 3 negatives / 1 positive
    assert pos[1].item() == pytest.approx(4.0)  # no positive: counted as one
    assert torch.allclose(cls, torch.tensor([4 / (4 * 3), 1.0, 1.0, 1.0]))  # n / (classes * count)
    capped, _ = loss_weights([[1.0] + [0.0] * 9] + [[0.0] * 10] * 19, [0] * 20, schema, LossArgs(max_weight=5.0))
    assert capped[0].item() == 5.0
    assert loss_weights(rows, [0, 0, 0, 1], schema, LossArgs(topic_pos_weight=False, stance_class_weights=False)) == (None, None)


def test_head_size_matches_schema(schema):
    from coopstance.model import build_tiny_model, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(["Chips und Batterien.", "芯片出口管制。"] * 20, vocab_size=300)
    model = build_tiny_model(ModelArgs(name_or_path="tiny"), schema, tokenizer)
    assert model.config.num_labels == schema.num_labels
    assert model.config.id2label == schema.id2label
    out = model(**tokenizer(["Chips."], return_tensors="pt"))
    assert out.logits.shape == (1, schema.num_labels)


def test_offline_hub_name_fails_fast_with_the_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    start = time.time()
    with pytest.raises(ModelUnavailableError) as err:
        ensure_model_available("bert-base-multilingual-cased")
    message = str(err.value)
    assert time.time() - start < 5
    assert "bert-base-multilingual-cased" in message and "configs/tiny.yaml" in message and "model.name_or_path=" in message


def test_unreachable_hub_fails_fast(tmp_path):
    """Without HF_HUB_OFFLINE: the network probe must give up within seconds (closed port here)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9"}
    code = "from coopstance.model import ensure_model_available as e\ntry:\n e('xlm-roberta-base')\nexcept Exception as x:\n print(x)"
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert time.time() - start < 30  # seconds, not a download timeout; loose for loaded CI machines
    assert "Cannot load model 'xlm-roberta-base'" in out.stdout and "unreachable" in out.stdout


def test_local_folder_without_config(tmp_path):
    with pytest.raises(ModelUnavailableError, match="has no config.json"):
        ensure_model_available(str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="no such local folder"):
        ensure_model_available("./no/such/model")


def test_tiny_tokenizer_is_deterministic_and_covers_the_text():
    from coopstance.model import train_tiny_tokenizer

    texts = ["Exportkontrollen für Chips und Batterien.", "芯片出口管制收紧。", "배터리 공급망 다변화", "Gallium and germanium."] * 5
    first, second = train_tiny_tokenizer(texts, 300), train_tiny_tokenizer(list(texts), 300)
    assert first.get_vocab() == second.get_vocab()
    tokens = first.convert_ids_to_tokens(first("Batterien und Chips.")["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[UNK]" not in tokens


def test_freeze_layers_stops_the_gradient_below_layer_n(schema):
    from coopstance.config import ConfigError, TinyModelArgs
    from coopstance.model import build_tiny_model, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(["Chips und Batterien.", "芯片出口管制。"] * 20, vocab_size=300)
    tiny = TinyModelArgs(num_hidden_layers=3)
    model = build_tiny_model(ModelArgs(name_or_path="tiny", freeze_layers=2, tiny=tiny), schema, tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.", "bert.encoder.layer.1.")) for n in trainable)
    assert any(n.startswith("bert.encoder.layer.2.") for n in trainable) and "classifier.weight" in trainable
    loss = model(**tokenizer(["Chips."], return_tensors="pt")).logits.sum()
    loss.backward()
    assert model.bert.encoder.layer[1].output.dense.weight.grad is None
    assert model.bert.encoder.layer[2].output.dense.weight.grad is not None
    with pytest.raises(ConfigError, match="model.freeze_layers=4 but the encoder has 3 layers; use at most 3"):
        build_tiny_model(ModelArgs(name_or_path="tiny", freeze_layers=4, tiny=tiny), schema, tokenizer)
    with pytest.raises(ConfigError, match="model.freeze_layers=-1 must be >= 0"):
        ModelArgs(name_or_path="tiny", freeze_layers=-1)


def test_keep_layers_drops_the_top_layers_and_exports_a_plain_shallower_model(schema, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from coopstance.config import ConfigError, TinyModelArgs
    from coopstance.model import build_tiny_model, drop_top_layers, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(["Chips und Batterien.", "芯片出口管制。"] * 20, vocab_size=300)
    torch.manual_seed(0)
    full = build_tiny_model(ModelArgs(name_or_path="tiny", tiny=TinyModelArgs(num_hidden_layers=3)), schema, tokenizer).eval()
    full.save_pretrained(tmp_path / "full")
    # the pretrained encoder path: load a 3-layer checkpoint, keep its bottom 2 layers with their weights
    kept = AutoModelForSequenceClassification.from_pretrained(tmp_path / "full")
    drop_top_layers(kept, 2)
    assert len(kept.bert.encoder.layer) == 2 and kept.config.num_hidden_layers == 2
    assert torch.equal(kept.bert.encoder.layer[1].output.dense.weight, full.bert.encoder.layer[1].output.dense.weight)
    kept.save_pretrained(tmp_path / "kept")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "kept").eval()
    kept.eval()
    inputs = tokenizer(["Chips und Batterien."], return_tensors="pt")
    assert len(reloaded.bert.encoder.layer) == 2
    assert torch.allclose(reloaded(**inputs).logits, kept(**inputs).logits, atol=1e-6)
    # the same output as the full model's hidden state after layer 2, through the same head
    hidden = full.bert(**inputs, output_hidden_states=True).hidden_states[2]
    by_hand = full.classifier(full.bert.pooler(hidden))
    assert torch.allclose(by_hand, kept(**inputs).logits, atol=1e-5)
    with pytest.raises(ConfigError, match="model.keep_layers=4 but the encoder has 3 layers; use at most 3"):
        drop_top_layers(full, 4)
    with pytest.raises(ConfigError, match="model.keep_layers=-1 must be >= 0"):
        ModelArgs(name_or_path="tiny", keep_layers=-1)


def test_mean_pooling_layer_feeds_the_stock_head_the_masked_mean_and_survives_export(schema, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from coopstance.config import ConfigError, TinyModelArgs
    from coopstance.model import add_mean_pooling_layer, build_tiny_model, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(["Chips und Batterien.", "芯片出口管制。", "Export controls on gallium."] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = build_tiny_model(ModelArgs(name_or_path="tiny", pooling="mean", tiny=TinyModelArgs(num_hidden_layers=2)), schema, tokenizer)
    model.eval()
    assert len(model.bert.encoder.layer) == 3 and model.config.num_hidden_layers == 3 and model.config.coopstance_mean_pooling
    batch = tokenizer(["Chips und Batterien.", "Export controls on gallium and germanium, and more chips."], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden[2] * mask).sum(1) / mask.sum(1)
    expected = model.bert.encoder.layer[1].output.LayerNorm(mean)  # standardized, then the last layer's own scale and shift
    assert torch.nn.functional.cosine_similarity(hidden[3][:, 0], expected, dim=-1).min() > 0.999
    # padding never counts: the short sentence alone gives the logits it gets in the padded batch
    with torch.no_grad():
        alone = model(**tokenizer(["Chips und Batterien."], return_tensors="pt")).logits
        padded = model(**batch).logits[:1]
    assert torch.allclose(alone, padded, atol=1e-5)
    # a training step leaves it a mean-pooler: queries and keys get no gradient while both are zero
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(**batch).logits.sum().backward()
    optimizer.step()
    pooling = model.bert.encoder.layer[-1].attention.self
    assert not pooling.query.weight.any() and not pooling.key.weight.any()
    # the export is a plain checkpoint of one layer more, and a second call (fine-tuning it again) adds nothing
    model.eval().save_pretrained(tmp_path / "m")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    add_mean_pooling_layer(reloaded)
    assert len(reloaded.bert.encoder.layer) == 3
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, model(**batch).logits, atol=1e-5)
    with pytest.raises(ConfigError, match="model.pooling='max' is not one of"):
        ModelArgs(name_or_path="tiny", pooling="max")
