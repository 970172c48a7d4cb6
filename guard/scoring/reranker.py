"""The reranker that sees the photo: Qwen-VL-family yes/no rerankers through ``transformers``.

Supported checkpoints (a local directory or a hub id, ``GUARD_RERANKER_MODEL``):

- ``vec-ai/lychee-rerank-mm`` and other Qwen2-VL / Qwen2.5-VL yes/no rerankers ("lychee" template);
- Qwen3-VL-Reranker (``Qwen/Qwen3-VL-Reranker-2B`` / ``-8B``) and compatible ("qwen3-vl" template).

Both read one chat turn: a system prompt asking for "yes" or "no", then
``<Instruct>: {instruction}<Query>:[image]{question}\\n<Document>:{reply}``, and score
P(yes) = softmax over the ``no`` / ``yes`` logits at the last position (for Qwen3-VL-Reranker this
is the same number as its sigmoid over ``h · (w_yes - w_no)``). The raw yes-minus-no logit goes
through a versioned score map (``calibration/reranker.json``, see :mod:`guard.scoring.score_map`).

Images are capped at ``GUARD_RERANKER_MAX_PIXELS`` and preprocessed by transformers' PIL image
processor (the torchvision one is never imported). Pairs are scored in left-padded batches under
``torch.inference_mode()``; CUDA with bfloat16 when present, CPU float32 otherwise.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guard.errors import ScorerError
from guard.scoring.base import (
    ModelScorer,
    ScoreInput,
    cap_pixels,
    pick_device,
    resolve_checkpoint,
)
from guard.scoring.score_map import ScoreMap, load_score_map

if TYPE_CHECKING:
    import torch

    from guard.settings import Settings

SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
VISION_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
FEATURES = ("yes_no_logit",)


@dataclass(frozen=True, slots=True)
class Template:
    """How one reranker family phrases a (query, document) pair."""

    name: str
    image_factor: int
    """patch size x merge size: image sides are multiples of this."""
    min_pixels: int
    empty: str
    """What stands for an empty query or document ("" or "NULL")."""

    def prompt(self, instruction: str, question: str, image_tokens: str | None, reply: str) -> str:
        query = (image_tokens or "") + question
        return (
            f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
            f"<|im_start|>user\n<Instruct>: {instruction}"
            f"<Query>:{query or self.empty}"
            f"\n<Document>:{reply or self.empty}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )


TEMPLATES = {
    # vec-ai/lychee-rerank-mm (Qwen2.5-VL): the processor's chat template joins the content parts.
    "lychee": Template("lychee", image_factor=28, min_pixels=4 * 28 * 28, empty=""),
    # Qwen3-VL-Reranker: 16 px patches merged 2x2; "NULL" stands for an empty side.
    "qwen3-vl": Template("qwen3-vl", image_factor=32, min_pixels=4 * 32 * 32, empty="NULL"),
}
FAMILIES: dict[str, tuple[str, str]] = {
    # model_type -> (transformers class, default template)
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "lychee"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "lychee"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "qwen3-vl"),
}


@dataclass(frozen=True, slots=True)
class RerankerConfig:
    model: str
    """A local checkpoint directory or a hub id such as ``vec-ai/lychee-rerank-mm``."""
    revision: str | None = None
    device: str = "auto"
    max_pixels: int = 1280 * 28 * 28
    batch_size: int = 8
    template: str = "auto"
    calibration: str | None = None
    threads: int = 2


def _fingerprint(source: str, local: bool, config: Any) -> str:
    if local:
        h = hashlib.sha256((Path(source) / "config.json").read_bytes())
        for f in sorted(Path(source).glob("*.safetensors")) + sorted(Path(source).glob("*.bin")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        return h.hexdigest()[:12]
    commit = getattr(config, "_commit_hash", None)
    return str(commit)[:12] if commit else "hub"


class RerankerScorer(ModelScorer):
    """A Qwen-VL-family yes/no reranker: P(yes | instruction, photo + question, reply), calibrated.

    The photo's pixels replace the text read from it; without a photo that text joins the question.
    The instruction is part of its prompt."""

    sees_image = True
    reads_instruction = True
    image_text_with_image = False

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        template: Template,
        score_map: ScoreMap,
        device: str,
        max_pixels: int,
        batch_size: int,
        model_id: str,
    ) -> None:
        self._model = model
        self._tok = tokenizer
        self._images = image_processor
        self.template = template
        self._map = score_map
        self._device = device
        self.max_pixels = max(template.min_pixels, int(max_pixels))
        self._batch = max(1, int(batch_size))
        self._lock = threading.Lock()
        vocab = tokenizer.get_vocab()
        self.yes_id = vocab.get("yes")
        self.no_id = vocab.get("no")
        if self.yes_id is None or self.no_id is None:
            raise ScorerError(f"reranker {model_id}: the tokenizer has no single 'yes' / 'no' token")
        self.image_token_id = vocab.get(IMAGE_PAD)
        if self.image_token_id is None:
            raise ScorerError(f"reranker {model_id}: the tokenizer has no {IMAGE_PAD} token")
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else vocab.get("<|endoftext|>", 0))
        self.merge = int(getattr(image_processor, "merge_size", 2))
        self._version = f"reranker:{model_id}:{template.name}:px{self.max_pixels}:{score_map.id}"

    @classmethod
    def load(cls, cfg: RerankerConfig) -> RerankerScorer:
        """Load a checkpoint (slow: done once at start-up). Raises ScorerError with what is wrong."""
        source, local = resolve_checkpoint(
            cfg.model, setting="GUARD_RERANKER_MODEL", kind="reranker", example="vec-ai/lychee-rerank-mm"
        )
        score_map = load_score_map(cfg.calibration, backend="reranker", needs={"default": FEATURES})
        try:
            import torch
            import transformers
            from transformers import AutoConfig, AutoTokenizer
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise ScorerError(
                "the reranker backend needs torch and transformers: "
                f"pip install 'reply-guard[models]' ({exc})"
            ) from exc
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        kw: dict[str, Any] = {"revision": cfg.revision} if cfg.revision else {}
        if local:
            kw["local_files_only"] = True
        try:
            config = AutoConfig.from_pretrained(source, **kw)
        except Exception as exc:
            raise ScorerError(f"cannot read the reranker config of {cfg.model!r}: {exc}") from exc
        model_type = str(getattr(config, "model_type", ""))
        if model_type not in FAMILIES:
            raise ScorerError(
                f"reranker {cfg.model!r} is a {model_type or 'unknown'!r} model "
                f"({', '.join(getattr(config, 'architectures', None) or ['no architectures'])}); "
                f"supported Qwen-VL families: {', '.join(FAMILIES)}"
            )
        class_name, default_template = FAMILIES[model_type]
        template_name = default_template if cfg.template == "auto" else cfg.template
        if template_name not in TEMPLATES:
            raise ScorerError(f"GUARD_RERANKER_TEMPLATE={cfg.template!r}: use auto, {', '.join(TEMPLATES)}")
        device, dtype = pick_device(cfg.device)
        if device == "cpu":
            torch.set_num_threads(max(1, cfg.threads))
        try:
            model_cls = getattr(transformers, class_name)
            model = model_cls.from_pretrained(source, dtype=dtype, attn_implementation="sdpa", **kw)
            model.to(device)
            model.eval()
            tokenizer = AutoTokenizer.from_pretrained(source, **kw)
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(source, **kw)
        except Exception as exc:
            raise ScorerError(f"cannot load reranker {cfg.model!r}: {type(exc).__name__}: {exc}") from exc
        model_id = f"{Path(source).name if local else source}@{_fingerprint(source, local, config)}"
        return cls(
            model=model,
            tokenizer=tokenizer,
            image_processor=image_processor,
            template=TEMPLATES[template_name],
            score_map=score_map,
            device=device,
            max_pixels=cfg.max_pixels,
            batch_size=cfg.batch_size,
            model_id=model_id,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RerankerScorer:
        return cls.load(
            RerankerConfig(
                model=settings.reranker_model or "",
                device=settings.model_device,
                max_pixels=settings.reranker_max_pixels,
                batch_size=settings.reranker_batch_size,
                template=settings.reranker_template,
                calibration=settings.model_calibration,
                threads=settings.scorer_threads,
            )
        )

    @property
    def name(self) -> str:
        return "reranker"

    @property
    def version(self) -> str:
        return self._version

    # -- input building ---------------------------------------------------------------------

    def build_inputs(self, items: Sequence[ScoreInput]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs for ``items`` (public for tests)."""
        import torch

        images = [
            cap_pixels(it.image.convert("RGB"), self.max_pixels) for it in items if it.image is not None
        ]
        grids: list[list[int]] = []
        pixel_values = None
        if images:
            size = {"shortest_edge": self.template.min_pixels, "longest_edge": self.max_pixels}
            vis = self._images(images=images, size=size, return_tensors="pt")
            pixel_values = vis["pixel_values"]
            grids = [[int(v) for v in row] for row in vis["image_grid_thw"]]
        prompts: list[str] = []
        k = 0
        for it in items:
            tokens = None
            if it.image is not None:
                t, h, w = grids[k]
                k += 1
                n = t * h * w // (self.merge * self.merge)
                tokens = VISION_PLACEHOLDER.replace(IMAGE_PAD, IMAGE_PAD * n)
            prompts.append(
                self.template.prompt(it.instruction.strip(), self.query_text(it), tokens, self.reply_text(it))
            )
        ids = self._tok(prompts, add_special_tokens=False)["input_ids"]
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, longest - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[i, longest - len(x) :] = 1
        out: dict[str, torch.Tensor] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "mm_token_type_ids": ((input_ids == self.image_token_id) & (mask == 1)).to(torch.int),
        }
        if pixel_values is not None:
            out["pixel_values"] = pixel_values
            out["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        return out

    # -- scoring ----------------------------------------------------------------------------

    def raw_logits(self, items: Sequence[ScoreInput]) -> list[float]:
        """logit(yes) - logit(no) at the last position, per item (the score map's input)."""
        import torch

        out: list[float] = []
        for start in range(0, len(items), self._batch):
            chunk = items[start : start + self._batch]
            inputs = self.build_inputs(chunk)
            with self._lock, torch.inference_mode():
                moved = {k: v.to(self._device) for k, v in inputs.items()}
                if "pixel_values" in moved:
                    moved["pixel_values"] = moved["pixel_values"].to(self._model.dtype)
                logits = self._model(**moved, use_cache=False, logits_to_keep=1).logits[:, -1, :]
                pair = logits[:, [self.no_id, self.yes_id]].float()
                out.extend((pair[:, 1] - pair[:, 0]).cpu().tolist())
        return out

    def scores(self, items: Sequence[ScoreInput]) -> list[float]:
        return [self._map.score("default", {"yes_no_logit": r}) for r in self.raw_logits(items)]
