"""A PyTorch port of the reference eCLIP trainer (ykumards/eCLIP `autoresearch/train.py`) at its
*baseline* settings, mirroring `trainer/src/train.rs` line for line.

Why it exists: it is the Python side of the Rust-vs-PyTorch parity tests (see `parity_fixtures.py`)
and the eager PyTorch baseline for throughput benchmarks of the Rust trainer. The public eCLIP
snapshot lacks the `autoresearch/` folder, so this is reconstructed from the documented reference
(the team's notes on ykumards/eCLIP, kept outside this repository) and from `train.rs`, which starts as that reference, flaws included (the
logit multiplier exp(log_temperature) initialised at 14.3 and clamped to [0.01, 2.0], so it is frozen
at 2.0 and passes no gradient).

Module names give `state_dict` keys identical to the Rust VarStore names (and to the Rust checkpoint,
`checkpoint.safetensors`): `image_encoder.backbone.*` (timm VisionTransformer),
`image_encoder.projector.*`, `text_encoder.backbone.*` (transformers DistilBertModel, or any
transformers AutoModel loaded from a directory), `text_encoder.projector.*`,
`heatmap_processor.{attention,patch_embed,heatmap_embed,norm}.*`, `log_temperature` (0-dim).

CLI (trains on a split written by the Rust `prepare` binary, CONTRACT.md):
    python reference/eclip_reference.py --data OUT/train.safetensors --profile tests --steps 20 --device cpu
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import AutoModel, DistilBertConfig, DistilBertModel

# ---------------------------------------------------------------------------
# Hyperparameters (the reference's baseline, train.py before optimisation; = train.rs)
# ---------------------------------------------------------------------------
PROJ_DIM = 128  # shared embedding width (reference final: 512)
BATCH_SIZE = 48  # images per contrastive batch (reference final: 64)
LEARNING_RATE = 3e-4  # peak LR (reference final: 2e-4)
WEIGHT_DECAY = 1e-4  # AdamW, one group: every parameter, log_temperature too
MAX_STEPS = 400  # optimiser steps of the LR schedule (reference final: 800)
WARMUP_STEPS = 40  # linear warmup, then cosine to 0 at MAX_STEPS
GRAD_CLIP = 1.0  # max global grad norm

EXPERT_PROB = 0.3  # probability of an expert batch each step (reference final: 0.8)
MIXUP_ALPHA = 0.3  # lam ~ Beta(a, a) mixes image and masked embeddings
AUX_LOSS_WEIGHT = 0.1  # weight of the expert loss
HEATMAP_HEADS = 4  # heads of the heatmap processor's attention

INIT_TEMPERATURE = 0.07  # the logit *multiplier* starts at 1/0.07 = 14.3 ...
MIN_TEMPERATURE = 0.01  # ... and is clamped to [0.01, 2.0], as the reference had it
MAX_TEMPERATURE = 2.0

VISION_LN_EPS = 1e-6  # timm ViT LayerNorm eps
TEXT_DROPOUT = 0.1  # DistilBERT dropout and attention dropout (train mode only)
MAX_POSITIONS = 512  # DistilBERT position embeddings

SIGMA_FLOOR = 0.02  # the reference's bbox_to_heatmap lower bound on sigma

# ImageNet normalisation (the reference's, although the augreg ViT weights expect 0.5/0.5).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# The harness's profiles: a copy of trainer/src/profile.rs (Profile::tests/cpu/gpu); keep in step.
PROFILES = {
    "tests": dict(
        image_size=32, patch_size=8, vision_layers=2, vision_width=64, vision_heads=2, vision_mlp=256,
        text_layers=2, text_width=64, text_heads=2, text_mlp=256, caption_len=32, snippet_len=16,
        embed_batch=64,
    ),
    "cpu": dict(
        image_size=64, patch_size=8, vision_layers=4, vision_width=128, vision_heads=4, vision_mlp=512,
        text_layers=4, text_width=128, text_heads=4, text_mlp=512, caption_len=64, snippet_len=32,
        embed_batch=64,
    ),
    "gpu": dict(
        image_size=224, patch_size=16, vision_layers=12, vision_width=384, vision_heads=6, vision_mlp=1536,
        text_layers=6, text_width=768, text_heads=12, text_mlp=3072, caption_len=128, snippet_len=64,
        embed_batch=128,
    ),
}


# ---------------------------------------------------------------------------
# Heatmaps (the reference's prepare.py bbox_to_heatmap / regions_to_heatmap; = heatmap.rs)
# ---------------------------------------------------------------------------
def heatmaps(boxes: torch.Tensor, nboxes: torch.Tensor, size: int) -> torch.Tensor:
    """Heatmaps (B,1,S,S) f32 in [0,1] from normalised xyxy boxes (B,K,4), the first nboxes[b] real.

    Each box is the reference's Gaussian exp(-((x-cx)^2/(2sx^2) + (y-cy)^2/(2sy^2))) on a
    linspace(0,1,S) grid (rows y, columns x), sigma = half the box side floored at 0.02; the boxes of
    one heatmap merge by element-wise max from zeros. Batched like trainer/src/heatmap.rs so that the
    benchmark loop does not pay a Python loop per box.
    """
    boxes = boxes.float()
    k = boxes.shape[1]
    x1, y1, x2, y2 = boxes.unbind(-1)  # (B, K) each
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    sx = ((x2 - x1) / 2.0).clamp_min(SIGMA_FLOOR)
    sy = ((y2 - y1) / 2.0).clamp_min(SIGMA_FLOOR)
    grid = torch.linspace(0.0, 1.0, size, device=boxes.device).view(1, 1, size)
    ex = (grid - cx.unsqueeze(-1)).square() / (sx.square() * 2.0).unsqueeze(-1)  # (B, K, S) along x
    ey = (grid - cy.unsqueeze(-1)).square() / (sy.square() * 2.0).unsqueeze(-1)  # (B, K, S) along y
    h = (ex.unsqueeze(2) + ey.unsqueeze(3)).neg().exp()  # (B, K, S_y, S_x)
    valid = torch.arange(k, device=boxes.device).view(1, k) < nboxes.to(boxes.device).view(-1, 1)
    h = h * valid.float().view(-1, k, 1, 1)
    return h.amax(dim=1).clamp_min(0.0).unsqueeze(1)


def bbox_to_heatmap(box, size: int) -> torch.Tensor:
    """The reference's bbox_to_heatmap for one normalised xyxy box: (1,S,S) f32 in [0,1]."""
    return heatmaps(torch.as_tensor(box, dtype=torch.float32).view(1, 1, 4), torch.tensor([1]), size)[0]


# ---------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------
def build_vit(profile: dict) -> VisionTransformer:
    """A random timm ViT at the profile's sizes: pooled CLS (global_pool='token'), no head."""
    return VisionTransformer(
        img_size=profile["image_size"],
        patch_size=profile["patch_size"],
        embed_dim=profile["vision_width"],
        depth=profile["vision_layers"],
        num_heads=profile["vision_heads"],
        mlp_ratio=profile["vision_mlp"] / profile["vision_width"],
        qkv_bias=True,
        num_classes=0,
        global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=VISION_LN_EPS),
    )


def load_vit(model_dir: Path) -> nn.Module:
    """A timm ViT from a directory holding a timm-style config.json (`architecture`) and model.safetensors.

    The classifier head (if the weights have one) is dropped: the tower is used with num_classes=0.
    """
    config = json.loads((model_dir / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=0)
    state = {k: v for k, v in load_file(model_dir / "model.safetensors").items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=True)
    return model


def build_distilbert(profile: dict, vocab_size: int) -> DistilBertModel:
    """A random DistilBERT at the profile's sizes (the reference's distilbert-base-uncased shape at `gpu`)."""
    config = DistilBertConfig(
        vocab_size=vocab_size,
        max_position_embeddings=MAX_POSITIONS,
        dim=profile["text_width"],
        n_layers=profile["text_layers"],
        n_heads=profile["text_heads"],
        hidden_dim=profile["text_mlp"],
        dropout=TEXT_DROPOUT,
        attention_dropout=TEXT_DROPOUT,
        activation="gelu",
    )
    return DistilBertModel(config)


def load_text_tower(model_dir: Path) -> nn.Module:
    """Any transformers AutoModel from a local pretrained directory (e.g. DistilBERT, or the MiniLM BERT)."""
    return AutoModel.from_pretrained(model_dir, dtype=torch.float32)


def text_width(backbone: nn.Module) -> int:
    """Hidden size of a transformers text model (DistilBERT calls it `dim`)."""
    config = backbone.config
    return config.dim if hasattr(config, "dim") else config.hidden_size


# ---------------------------------------------------------------------------
# eCLIP model
# ---------------------------------------------------------------------------
class ImageEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, width: int):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Linear(width, PROJ_DIM)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(images))  # (B, PROJ_DIM)


class TextEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, width: int):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Linear(width, PROJ_DIM)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CLS of the last hidden state -> (B, PROJ_DIM)."""
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.projector(hidden[:, 0])


class HeatmapProcessor(nn.Module):
    """Heatmap patches attend to image patches (separate from the ViT, no positional embedding)."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(PROJ_DIM, HEATMAP_HEADS, batch_first=True)
        self.patch_embed = nn.Conv2d(3, PROJ_DIM, patch_size, stride=patch_size)
        self.heatmap_embed = nn.Conv2d(1, PROJ_DIM, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(PROJ_DIM)

    def forward(self, images: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        """images (B,3,S,S), heatmaps (B,1,S,S) -> (B, PROJ_DIM)."""
        img = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        heat = self.heatmap_embed(heatmaps).flatten(2).transpose(1, 2)  # (B, N, D)
        out, _ = self.attention(self.norm(heat), self.norm(img), img, need_weights=False)
        return out.mean(dim=1)  # global average pool over the N heatmap tokens


class Eclip(nn.Module):
    def __init__(self, image_backbone: nn.Module, image_width: int, text_backbone: nn.Module,
                 txt_width: int, patch_size: int):
        super().__init__()
        self.image_encoder = ImageEncoder(image_backbone, image_width)
        self.text_encoder = TextEncoder(text_backbone, txt_width)
        self.heatmap_processor = HeatmapProcessor(patch_size)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(1.0 / INIT_TEMPERATURE), dtype=torch.float32))

    def temperature(self) -> torch.Tensor:
        """The logit multiplier clamp(exp(log_temperature), MIN, MAX): 14.3 clamped to 2.0 at init."""
        return self.log_temperature.exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids, mask)

    def encode_masked_image(self, images: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        return self.heatmap_processor(images, heatmaps)


def build_model(profile: dict, vocab_size: int, text_tower: Path | None = None,
                image_tower: Path | None = None) -> Eclip:
    """eCLIP at the profile's sizes; a tower directory replaces the random tower of that side."""
    vit = load_vit(image_tower) if image_tower else build_vit(profile)
    if image_tower and tuple(vit.patch_embed.img_size) != (profile["image_size"],) * 2:
        raise SystemExit(f"the image tower takes {vit.patch_embed.img_size} images, the profile "
                         f"{profile['image_size']} px")
    bert = load_text_tower(text_tower) if text_tower else build_distilbert(profile, vocab_size)
    if bert.config.vocab_size < vocab_size:
        raise SystemExit(f"the text tower knows {bert.config.vocab_size} tokens, the data uses {vocab_size}")
    return Eclip(vit, vit.num_features, bert, text_width(bert), profile["patch_size"])


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------
def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the rows (x / max(|x|, 1e-12), as train.rs)."""
    return F.normalize(x, dim=-1, eps=1e-12)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss: (CE(i2t) + CE(t2i)) / 2 over logits = img @ txt.T * scale."""
    logits = img @ txt.T * scale
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2.0


def sample_beta(a: float) -> float:
    """lam ~ Beta(a, a) from two Gamma(a) draws of the seeded CPU generator (as train.rs)."""
    g = torch._standard_gamma(torch.tensor([a, a], dtype=torch.float64))
    x, y = g[0].item(), g[1].item()
    return x / (x + y) if x + y > 0.0 else 0.5  # both draws underflowed


def expert_loss(img: torch.Tensor, masked: torch.Tensor, txt: torch.Tensor, snippet: torch.Tensor,
                scale: torch.Tensor, lam: float) -> torch.Tensor:
    """mixed = normalize(lam*img + (1-lam)*masked); (CE(mixed, snippet) + CE(masked, txt)) / 2."""
    mixed = normalize(img * lam + masked * (1.0 - lam))
    return (contrastive_loss(mixed, snippet, scale) + contrastive_loss(masked, txt, scale)) / 2.0


@dataclass
class Batch:
    images: torch.Tensor  # (B,3,S,S) f32, ImageNet-normalised
    caption_ids: torch.Tensor  # (B,Lc) i64
    caption_mask: torch.Tensor  # (B,Lc) i64


@dataclass
class ExpertBatch:
    images: torch.Tensor  # (B,3,S,S) f32, ImageNet-normalised
    caption_ids: torch.Tensor  # (B,Lc) i64
    caption_mask: torch.Tensor  # (B,Lc) i64
    heatmaps: torch.Tensor  # (B,1,S,S) f32 in [0,1]
    snippet_ids: torch.Tensor  # (B,Ls) i64
    snippet_mask: torch.Tensor  # (B,Ls) i64


def step_loss(model: Eclip, batch: Batch, expert: ExpertBatch | None, lam: float) -> torch.Tensor:
    """The total loss of one step: contrastive, plus AUX_LOSS_WEIGHT * expert loss when `expert` is given.

    Dropout follows the model's mode (train.rs trains with dropout on; the parity fixtures use eval()).
    `lam` is explicit so that a fixture fixes it; the training loop draws it with `sample_beta`.
    """
    img = normalize(model.encode_image(batch.images))
    txt = normalize(model.encode_text(batch.caption_ids, batch.caption_mask))
    scale = model.temperature()
    loss = contrastive_loss(img, txt, scale)
    if expert is not None:
        e_img = normalize(model.encode_image(expert.images))
        e_txt = normalize(model.encode_text(expert.caption_ids, expert.caption_mask))
        e_masked = normalize(model.encode_masked_image(expert.images, expert.heatmaps))
        e_snippet = normalize(model.encode_text(expert.snippet_ids, expert.snippet_mask))
        loss = loss + expert_loss(e_img, e_masked, e_txt, e_snippet, scale, lam) * AUX_LOSS_WEIGHT
    return loss


def lr_lambda(step: int) -> float:
    """LambdaLR factor: linear warmup, then cosine to 0 at MAX_STEPS."""
    if step < WARMUP_STEPS:
        return step / max(WARMUP_STEPS, 1)
    progress = (step - WARMUP_STEPS) / max(MAX_STEPS - WARMUP_STEPS, 1)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------
# Data: a prepared split (CONTRACT.md) and its batches (= trainer/src/data.rs)
# ---------------------------------------------------------------------------
def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """u8 (B,3,S,S) -> f32 ImageNet-normalised, as ToTensor() + Normalize(mean, std)."""
    mean = torch.tensor(IMAGE_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


class Sampler:
    """Epochs of random permutations of `rows`, drop_last, like the reference's shuffled DataLoaders."""

    def __init__(self, rows: torch.Tensor, batch: int):
        self.rows = rows
        self.batch = max(min(batch, rows.shape[0]), 1)
        self.perm = rows[:0]
        self.pos = 0

    def next_rows(self) -> torch.Tensor:
        if self.pos + self.batch > self.perm.shape[0]:
            self.perm = self.rows[torch.randperm(self.rows.shape[0], device=self.rows.device)]
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx


class PreparedSplit:
    """A split written by the Rust `prepare`, on the device."""

    def __init__(self, path: Path, device: torch.device):
        t = {k: v.to(device) for k, v in load_file(path).items()}
        self.images = t["images"]  # (N,3,S,S) u8
        self.caption_ids, self.caption_mask = t["caption_ids"], t["caption_mask"]
        self.snippet_ids, self.snippet_mask = t["snippet_ids"], t["snippet_mask"]
        self.image_boxes, self.image_nboxes = t["image_boxes"], t["image_nboxes"]
        self.vocab_size = int(t["vocab_size"][0])
        n = self.images.shape[0]
        snippet_image = t["snippet_image"]
        self.snippet_order = torch.sort(snippet_image, stable=True).indices
        self.snippet_count = torch.bincount(snippet_image, minlength=n)
        self.snippet_start = self.snippet_count.cumsum(0) - self.snippet_count
        self.expert_rows = (self.snippet_count > 0).nonzero().view(-1)
        if self.expert_rows.numel() == 0:
            raise SystemExit("the prepared split has no regions (the expert batches need them)")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    def sampler(self, batch: int) -> Sampler:
        return Sampler(torch.arange(len(self), device=self.images.device), batch)

    def expert_sampler(self, batch: int) -> Sampler:
        return Sampler(self.expert_rows, batch)

    def batch(self, idx: torch.Tensor) -> Batch:
        return Batch(normalize_images(self.images[idx]), self.caption_ids[idx], self.caption_mask[idx])

    def expert_batch(self, idx: torch.Tensor) -> ExpertBatch:
        """Heatmap of all the image's boxes merged; the phrase of one random region as the snippet."""
        count, start = self.snippet_count[idx], self.snippet_start[idx]
        u = torch.rand(idx.shape[0], device=idx.device)
        pick = (u * count.float()).floor().long()
        pick = torch.minimum(pick, count - 1).clamp_min(0)
        snippet_idx = self.snippet_order[start + pick]
        heat = heatmaps(self.image_boxes[idx], self.image_nboxes[idx], self.image_size)
        return ExpertBatch(
            normalize_images(self.images[idx]), self.caption_ids[idx], self.caption_mask[idx],
            heat, self.snippet_ids[snippet_idx], self.snippet_mask[snippet_idx],
        )


# ---------------------------------------------------------------------------
# Training loop (= train.rs `train`, without the checkpoint and summary files)
# ---------------------------------------------------------------------------
def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the caching allocator's peak; CPU: the process's max RSS (the Rust summary's CPU measure)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a prepared train split (.safetensors)")
    ap.add_argument("--profile", choices=sorted(PROFILES), required=True)
    ap.add_argument("--steps", type=int, default=MAX_STEPS,
                    help="steps to run; the LR schedule stays on MAX_STEPS, as a budget cut in train.rs")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--text-tower", type=Path, help="a transformers model directory (else random DistilBERT)")
    ap.add_argument("--image-tower", type=Path, help="a timm model directory (else random ViT)")
    ap.add_argument("--bf16", action="store_true", help="forward passes under torch.autocast(bfloat16), CUDA only")
    args = ap.parse_args(argv)
    if args.bf16 and args.device != "cuda":
        ap.error("--bf16 needs --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device")

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    profile = PROFILES[args.profile]
    data = PreparedSplit(args.data, device)
    if data.image_size != profile["image_size"]:
        raise SystemExit(f"the split holds {data.image_size} px images, profile {args.profile} wants "
                         f"{profile['image_size']}")
    model = build_model(profile, data.vocab_size, args.text_tower, args.image_tower).to(device).train()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"device {args.device} | profile {args.profile} | {len(data)} images | {n_params / 1e6:.2f}M params | "
          f"proj {PROJ_DIM} bs {BATCH_SIZE} lr {LEARNING_RATE} steps {args.steps} | "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    sampler, expert_sampler = data.sampler(BATCH_SIZE), data.expert_sampler(BATCH_SIZE)
    log_every = max(args.steps // 10, 1)
    started = time.perf_counter()
    final_loss = float("nan")

    for step in range(1, args.steps + 1):
        lr = opt.param_groups[0]["lr"]  # LambdaLR: step s uses lr_lambda(s - 1)
        log_now = step == 1 or step % log_every == 0 or step == args.steps
        # The multiplier this step's loss uses (frozen at 2.0); read only when logged, as a read syncs CUDA.
        scale = model.temperature().item() if log_now else float("nan")
        batch = data.batch(sampler.next_rows())
        expert, lam = None, 0.5
        if torch.rand(1).item() < EXPERT_PROB:
            expert = data.expert_batch(expert_sampler.next_rows())
            lam = sample_beta(MIXUP_ALPHA) if MIXUP_ALPHA > 0 else 0.5
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
            loss = step_loss(model, batch, expert, lam)
        final_loss = loss.item()
        if not math.isfinite(final_loss):
            raise SystemExit(f"loss is {final_loss} at step {step}: stopping")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        sched.step()
        if log_now:
            secs = time.perf_counter() - started
            print(f"step {step:>5}/{args.steps} | loss {final_loss:.4f} | scale {scale:.4f} | "
                  f"lr {lr:.2e} | {step / max(secs, 1e-9):.2f} steps/s | {secs:.1f}s", flush=True)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    secs = time.perf_counter() - started
    print(f"steps_per_s={args.steps / max(secs, 1e-9):.4f} peak_mem_bytes={peak_memory_bytes(device)} "
          f"final_loss={final_loss:.6f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
