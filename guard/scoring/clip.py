"""CLIP / Chinese-CLIP / SigLIP: how close the reply is to the photo and to the question.

A dual encoder embeds the photo, the question (plus any text read from the photo) and the reply;
the raw features are the cosine similarities ``image_reply`` and ``question_reply``, and a
versioned score map (``calibration/clip.json``) turns them into a score in [0, 1]: the map
"image" when a photo is there, "text" when not. A dual encoder measures topical closeness, not
whether the reply helps: it is cheaper and weaker than the reranker, useful on CPUs and as a
feature. Images go through transformers' PIL image processors (torchvision is never imported).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guard.errors import ScorerError
from guard.scoring.base import ModelScorer, ScoreInput, pick_device, resolve_checkpoint
from guard.scoring.score_map import ScoreMap, load_score_map

if TYPE_CHECKING:
    import torch

    from guard.settings import Settings

FEATURES = {"image": ("image_reply", "question_reply"), "text": ("question_reply",)}
FAMILIES: dict[str, tuple[str, str, str]] = {
    # model_type -> (model class, PIL image processor module, class)
    "clip": ("CLIPModel", "clip.image_processing_pil_clip", "CLIPImageProcessorPil"),
    "chinese_clip": (
        "ChineseCLIPModel",
        "chinese_clip.image_processing_pil_chinese_clip",
        "ChineseCLIPImageProcessorPil",
    ),
    "siglip": ("SiglipModel", "siglip.image_processing_pil_siglip", "SiglipImageProcessorPil"),
}


@dataclass(frozen=True, slots=True)
class ClipConfig:
    model: str
    device: str = "auto"
    calibration: str | None = None
    threads: int = 2
    batch_size: int = 16


def _embedding(out: Any) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with pooler_output (5)."""
    import torch

    emb = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(emb.float(), dim=-1)


class ClipScorer(ModelScorer):
    """Dual-encoder similarity of (photo, question) and reply, calibrated. The question's embedding
    includes the text read from the photo, with or without the photo's own embedding."""

    sees_image = True

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        model_type: str,
        score_map: ScoreMap,
        device: str,
        model_id: str,
        batch_size: int = 16,
    ) -> None:
        self._model = model
        self._tok = tokenizer
        self._images = image_processor
        self.model_type = model_type
        self._map = score_map
        self._device = device
        self._batch = max(1, batch_size)
        self._lock = threading.Lock()
        text_cfg = getattr(model.config, "text_config", None)
        self._max_len = int(getattr(text_cfg, "max_position_embeddings", 77) or 77)
        self._version = f"clip:{model_id}:{score_map.id}"

    @classmethod
    def load(cls, cfg: ClipConfig) -> ClipScorer:
        source, local = resolve_checkpoint(
            cfg.model, setting="GUARD_CLIP_MODEL", kind="clip", example="openai/clip-vit-base-patch32"
        )
        score_map = load_score_map(cfg.calibration, backend="clip", needs=FEATURES)
        try:
            import importlib

            import torch
            import transformers
            from transformers import AutoConfig, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise ScorerError(
                f"the clip backend needs torch and transformers: pip install 'reply-guard[models]' ({exc})"
            ) from exc
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        kw: dict[str, Any] = {"local_files_only": True} if local else {}
        try:
            config = AutoConfig.from_pretrained(source, **kw)
        except Exception as exc:
            raise ScorerError(f"cannot read the clip config of {cfg.model!r}: {exc}") from exc
        model_type = str(getattr(config, "model_type", ""))
        if model_type not in FAMILIES:
            raise ScorerError(
                f"clip model {cfg.model!r} is a {model_type or 'unknown'!r} model; "
                f"supported: {', '.join(FAMILIES)}"
            )
        class_name, proc_module, proc_class = FAMILIES[model_type]
        device, dtype = pick_device(cfg.device)
        if device == "cpu":
            torch.set_num_threads(max(1, cfg.threads))
        try:
            model = getattr(transformers, class_name).from_pretrained(source, dtype=dtype, **kw)
            model.to(device)
            model.eval()
            tokenizer = AutoTokenizer.from_pretrained(source, **kw)
            module = importlib.import_module(f"transformers.models.{proc_module}")
            image_processor = getattr(module, proc_class).from_pretrained(source, **kw)
        except Exception as exc:
            raise ScorerError(f"cannot load clip model {cfg.model!r}: {type(exc).__name__}: {exc}") from exc
        if local:
            h = hashlib.sha256((Path(source) / "config.json").read_bytes())
            for f in sorted(Path(source).glob("*.safetensors")):
                h.update(f"{f.name}:{f.stat().st_size}".encode())
            model_id = f"{Path(source).name}@{h.hexdigest()[:12]}"
        else:
            model_id = f"{source}@{str(getattr(config, '_commit_hash', None) or 'hub')[:12]}"
        return cls(
            model=model,
            tokenizer=tokenizer,
            image_processor=image_processor,
            model_type=model_type,
            score_map=score_map,
            device=device,
            model_id=model_id,
            batch_size=cfg.batch_size,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ClipScorer:
        return cls.load(
            ClipConfig(
                model=settings.clip_model or "",
                device=settings.model_device,
                calibration=settings.model_calibration,
                threads=settings.scorer_threads,
            )
        )

    @property
    def name(self) -> str:
        return "clip"

    @property
    def version(self) -> str:
        return self._version

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        import torch

        if self.model_type == "siglip":  # trained on max_length padding; pools the last position
            enc = self._tok(
                list(texts),
                padding="max_length",
                truncation=True,
                max_length=self._max_len,
                return_tensors="pt",
            )
        else:
            enc = self._tok(
                list(texts), padding=True, truncation=True, max_length=self._max_len, return_tensors="pt"
            )
        with torch.inference_mode():
            enc = {k: v.to(self._device) for k, v in enc.items()}
            return _embedding(self._model.get_text_features(**enc)).cpu()

    def embed_images(self, images: Sequence[Any]) -> torch.Tensor:
        import torch

        pixels = self._images(images=[im.convert("RGB") for im in images], return_tensors="pt")[
            "pixel_values"
        ]
        with torch.inference_mode():
            px = pixels.to(self._device, self._model.dtype)
            return _embedding(self._model.get_image_features(pixel_values=px)).cpu()

    def features(self, items: Sequence[ScoreInput]) -> list[dict[str, float]]:
        """The raw similarities per item (the score map's inputs)."""
        out: list[dict[str, float]] = []
        for start in range(0, len(items), self._batch):
            chunk = items[start : start + self._batch]
            questions = [self.query_text(it) for it in chunk]
            replies = [self.reply_text(it) for it in chunk]
            with self._lock:
                texts = sorted(set(questions) | set(replies))
                emb = self.embed_texts(texts)
                index = {t: i for i, t in enumerate(texts)}
                with_image = [i for i, it in enumerate(chunk) if it.image is not None]
                img = self.embed_images([chunk[i].image for i in with_image]) if with_image else None
            for i, (q, r) in enumerate(zip(questions, replies, strict=True)):
                e_r = emb[index[r]]
                f = {"question_reply": float(emb[index[q]] @ e_r) if q and r else 0.0}
                if img is not None and i in with_image:
                    f["image_reply"] = float(img[with_image.index(i)] @ e_r) if r else 0.0
                out.append(f)
        return out

    def scores(self, items: Sequence[ScoreInput]) -> list[float]:
        return [
            self._map.score("image" if "image_reply" in f else "text", f) if it.reply.strip() else 0.0
            for f, it in zip(self.features(items), items, strict=True)
        ]
