#!/usr/bin/env python3
"""Loads model.safetensors (exported by `autoresearch-mcp export`) into the PyTorch port of the reference
eCLIP, eclip_reference.py next to this file, whose state_dict names equal the checkpoint's.

    P=$(scripts/python-env.sh)      # the project's Python: torch, timm, transformers, safetensors
    $P/bin/python load_pytorch.py   # loads it (strict) and prints what it loaded
    $P/bin/python load_pytorch.py --embed val_images.safetensors --out emb.safetensors

`--embed` takes a file with `images` (u8 N,3,S,S) or `caption_ids` + `caption_mask` (i64 N,L), as the
trainer's embed phases do, and writes `embeddings` (f32 N,D): the same numbers as the trainer's.
In your own code: `import load_pytorch; model = load_pytorch.load()`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import eclip_reference as ref  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

PROFILE = "@PROFILE@"  # the harness profile the model was trained at (image side, tower sizes)


def load(text_tower: Path | None = None, image_tower: Path | None = None, device: str = "cpu") -> ref.Eclip:
    """The exported model in eval mode. Pass the pretrained tower folders the run used, if any (its card
    names them): they fix the towers' architecture; their weights are then replaced by the checkpoint's."""
    state = load_file(str(HERE / "model.safetensors"))
    vocab_size = int(state.pop("harness.vocab_size")[0])
    # The port's module constants that the checkpoint's shapes fix (train.rs may have changed them).
    ref.PROJ_DIM = state["image_encoder.projector.weight"].shape[0]
    model = ref.build_model(ref.PROFILES[PROFILE], vocab_size, text_tower, image_tower)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


@torch.no_grad()
def embed(model: ref.Eclip, data: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
    """Embeddings of a file as the trainer's embed phases read it, in fixed batches, in file order."""
    device = next(model.parameters()).device
    out = []
    if "images" in data:
        images = data["images"]
        for s in range(0, images.shape[0], batch):
            out.append(model.encode_image(ref.normalize_images(images[s:s + batch].to(device))).float().cpu())
    else:
        ids, mask = data["caption_ids"].long(), data["caption_mask"].long()
        for s in range(0, ids.shape[0], batch):
            out.append(model.encode_text(ids[s:s + batch].to(device), mask[s:s + batch].to(device)).float().cpu())
    return torch.cat(out).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-tower", type=Path, help="the pretrained text tower folder the run used, if any")
    ap.add_argument("--image-tower", type=Path, help="the pretrained image tower folder the run used, if any")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--embed", type=Path, help="a file with `images`, or `caption_ids` and `caption_mask`")
    ap.add_argument("--out", type=Path, help="where --embed writes `embeddings`")
    a = ap.parse_args()
    model = load(a.text_tower, a.image_tower, a.device)
    n = sum(p.numel() for p in model.parameters())
    print(f"loaded {n} parameters into eclip_reference.Eclip (profile {PROFILE}, PROJ_DIM {ref.PROJ_DIM})")
    if a.embed:
        if not a.out:
            raise SystemExit("--embed needs --out")
        e = embed(model, load_file(str(a.embed)), ref.PROFILES[PROFILE]["embed_batch"])
        save_file({"embeddings": e}, str(a.out))
        print(f"wrote {tuple(e.shape)} embeddings to {a.out}")


if __name__ == "__main__":
    main()
