"""Tiny random-weight checkpoints built locally from configs (no hub, no download).

Each builder writes a directory laid out like a real checkpoint on the hub (config.json,
safetensors weights, tokenizer files, preprocessor_config.json), so the scorers load it through
the same code path a user's downloaded model takes. Models are tiny (hidden size 32-64, 1-2
layers) so that building and running one takes well under a second on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Text the tiny tokenizers are trained on: enough zh and en for every test string to tokenize,
# and "yes" / "no" often enough to become single tokens, as they are in the Qwen vocabulary.
CORPUS = [
    "yes no yes no yes no yes no",
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    'Note that the answer can only be "yes" or "no".',
    "Judge whether the response directly addresses the issue shown in the image and described in the query.",
    "<Instruct>: <Query>: <Document>: NULL",
    "The pocket seam came open, what do I do? We will send a replacement today.",
    "My parcel arrived crushed. Please share a photo and we will refund you.",
    "Thanks for your message, we support returns within 7 days.",
    "口袋开线怎么办？感谢您的反馈，本品支持7天无理由退换。包裹被压扁了，我们给您补发。",
    "a photo of a damaged parcel; a torn pocket; an order page; an error message",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}<>-_/\\|@#$%^&*+=~`\n",
]

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _trained_bpe(special_tokens: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (``tokenizers.Tokenizer``) trained on CORPUS, with ``special_tokens``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    return tok


def _qwen_tokenizer(out: Path, vocab_size: int = 400) -> dict[str, int]:
    """A byte-level BPE tokenizer with Qwen's special tokens; returns the special tokens' ids."""
    from transformers import PreTrainedTokenizerFast

    tok = _trained_bpe(QWEN_SPECIAL_TOKENS, vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.save_pretrained(out)
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    assert tok.token_to_id("yes") is not None and tok.token_to_id("no") is not None
    return ids


def build_qwen_vl(out: Path, *, family: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """A tiny Qwen2-VL or Qwen2.5-VL yes/no reranker checkpoint in ``out``."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    out.mkdir(parents=True, exist_ok=True)
    ids = _qwen_tokenizer(out)
    vocab = max(ids.values()) + 1
    vocab = max(vocab, 400)
    text: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision: dict[str, Any] = {
        "depth": 1,
        "hidden_size": 32,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    special = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    torch.manual_seed(seed)
    model: Any
    if family == "qwen2_vl":
        vision |= {"embed_dim": 32, "mlp_ratio": 2}
        cfg: Any = Qwen2VLConfig(text_config=text, vision_config=vision, **special)
        model = Qwen2VLForConditionalGeneration(cfg)
    elif family == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        text |= {"head_dim": 8, "rope_scaling": {"rope_type": "default", "mrope_section": [1, 1, 2]}}
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 32,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1],
        }
        cfg = Qwen3VLConfig(text_config=text, vision_config=vision, **special)
        model = Qwen3VLForConditionalGeneration(cfg)
    elif family == "qwen2_5_vl":
        vision |= {
            "intermediate_size": 64,
            "out_hidden_size": 32,
            "window_size": 56,
            "fullatt_block_indexes": [0],
        }
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special)
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    else:
        raise ValueError(family)
    model.eval()
    model.save_pretrained(out)
    # Like the real checkpoints: the image processor's settings (OpenAI CLIP mean/std, 14px patches).
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}.get(
                    family, "Qwen3VLProcessor"
                ),
                "min_pixels": 3136,
                "max_pixels": 12845056,
                "patch_size": 16 if family == "qwen3_vl" else 14,
                "temporal_patch_size": 2,
                "merge_size": 2,
                "image_mean": [0.5] * 3 if family == "qwen3_vl" else [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.5] * 3 if family == "qwen3_vl" else [0.26862954, 0.26130258, 0.27577711],
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "do_resize": True,
                "resample": 3,
            }
        )
    )
    return out


def build_cross_encoder(out: Path, *, seed: int = 0) -> Path:
    """A tiny BERT cross-encoder (one relevance logit), as Infinity, TEI and vLLM serve for /rerank."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        CORPUS * 20, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    BertTokenizerFast(tokenizer_object=tok, do_lower_case=True).save_pretrained(out)
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    model.eval()
    model.save_pretrained(out)
    return out


def _bpe_tokenizer(out: Path, *, bos: str, eos: str, pad: str, vocab_size: int = 400) -> dict[str, int]:
    """Byte-level BPE that wraps every text as ``bos text eos`` (as CLIP's tokenizer does)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([pad, bos, eos]))
    tok = _trained_bpe(specials, vocab_size)
    ids = {t: tok.token_to_id(t) for t in specials}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, ids[bos]), (eos, ids[eos])]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad
    ).save_pretrained(out)
    return ids


def build_clip(out: Path, *, family: str = "clip", seed: int = 0) -> Path:
    """A tiny CLIP, Chinese-CLIP or SigLIP checkpoint (random weights, 32x32 images)."""
    import torch
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    text: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
    }
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    processor = "CLIPImageProcessor"
    torch.manual_seed(seed)
    if family == "clip":
        ids = _bpe_tokenizer(out, bos="<|startoftext|>", eos="<|endoftext|>", pad="<|endoftext|>")
        text |= {
            "vocab_size": 400,
            "bos_token_id": ids["<|startoftext|>"],
            "eos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
        }
        cfg: Any = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        model: Any = transformers.CLIPModel(cfg)
    elif family == "siglip":
        ids = _bpe_tokenizer(out, bos="<s>", eos="</s>", pad="<pad>")
        text |= {
            "vocab_size": 400,
            "pad_token_id": ids["<pad>"],
            "bos_token_id": ids["<s>"],
            "eos_token_id": ids["</s>"],
        }
        cfg = transformers.SiglipConfig(text_config=text, vision_config=vision)
        model = transformers.SiglipModel(cfg)
        mean, std, processor = [0.5] * 3, [0.5] * 3, "SiglipImageProcessor"
    elif family == "chinese_clip":
        build_cross_encoder(out)  # its BERT WordPiece tokenizer; the model files are overwritten below
        text |= {"vocab_size": 300}
        cfg = transformers.ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        model = transformers.ChineseCLIPModel(cfg)
        processor = "ChineseCLIPImageProcessor"
    else:
        raise ValueError(family)
    model.eval()
    model.save_pretrained(out)
    crop = {"height": 32, "width": 32}
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": processor,
                "do_resize": True,
                "size": crop if family == "siglip" else {"shortest_edge": 32},
                "do_center_crop": family != "siglip",
                "crop_size": crop,
                "do_normalize": True,
                "image_mean": mean,
                "image_std": std,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "resample": 3,
            }
        )
    )
    return out
