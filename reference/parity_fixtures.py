"""Fixture files for the Rust-vs-PyTorch parity tests of the trainer's towers and training step.

Each subcommand writes safetensors files (safetensors.torch.save_file; every tensor contiguous, floats
f32, integers i64, except `lam` which is f64) that the Rust tests load and compare against:

  text        a pretrained transformers model dir (e.g. the offline MiniLM BERT) on real sentences
  distilbert  a small random DistilBERT saved with save_pretrained, plus its outputs
  vit         a random timm ViT saved as model.safetensors + timm-style config.json, plus its outputs
  step        the eCLIP model of eclip_reference.py: initial weights, one batch, loss and gradients

Run: python reference/parity_fixtures.py SUBCOMMAND --help
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM, DistilBertModel

import eclip_reference as ref

# Caption-like sentences of varied length; the last ones are longer than 32 tokens, so they are truncated.
SENTENCES = [
    "a red fox",
    "a woman holding an umbrella on a bridge",
    "two boats on a river under a full moon",
    "Mount Fuji seen through the waves of the sea.",
    "an actor in a striped kimono raises a fan",
    "Snow falls on the roofs of a quiet village at night.",
    "a courtesan reading a letter beside a lacquered box, with cherry blossoms behind her",
    "Travellers cross a wooden bridge while porters carry heavy loads along the coastal road.",
    "a samurai on horseback",
    "A crane stands in shallow water; reeds bend in the wind and a fisherman's hut is half hidden by mist.",
    "Three women in elaborate kimonos walk past a tea house, one of them looking back over her shoulder "
    "at a child who is chasing a small white dog across the street.",
    "The great wave towers over three fishing boats whose rowers bend low, while far behind, small and "
    "calm, the snow-capped mountain rests under a pale sky filled with scattered clouds.",
]

# The random DistilBERT of the `distilbert` and `step` fixtures.
SMALL_DISTILBERT = dict(vocab_size=1000, dim=64, n_layers=2, n_heads=2, hidden_dim=256, max_position_embeddings=512)


def save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Writes `tensors` detached, on the CPU and contiguous (what safetensors needs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    listed = {k: v for k, v in tensors.items() if not k.startswith("grad.")}
    if len(listed) > 16:
        print(f"wrote {path}: {len(tensors)} tensors")
    else:
        print(f"wrote {path}: " + ", ".join(f"{k} {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}"
                                            for k, v in listed.items()))


def padded_ids(gen: torch.Generator, lengths: list[int], seq_len: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids in [1, vocab) for the first lengths[b] tokens of each row, pad id 0 after; mask 1/0."""
    ids = torch.randint(1, vocab, (len(lengths), seq_len), generator=gen)
    mask = (torch.arange(seq_len).view(1, -1) < torch.tensor(lengths).view(-1, 1)).long()
    return ids * mask, mask


def cmd_text(args) -> None:
    """A pretrained transformers model on real sentences: ids, mask, CLS and the whole last hidden state."""
    tok = AutoTokenizer.from_pretrained(args.model_dir, use_fast=True)
    model = AutoModel.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    enc = tok(SENTENCES, padding="max_length", truncation=True, max_length=args.max_length, return_tensors="pt")
    assert tok.pad_token_id == 0, "the fixture promises pad id 0"
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    save({
        "input_ids": enc["input_ids"].long(),
        "attention_mask": enc["attention_mask"].long(),
        "cls": hidden[:, 0],
        "last_hidden_state": hidden,
    }, args.out)


def cmd_distilbert(args) -> None:
    """A small random DistilBERT saved as a transformers directory, and its outputs on padded random ids."""
    torch.manual_seed(0)
    config = DistilBertConfig(**SMALL_DISTILBERT)
    model = DistilBertForMaskedLM(config) if args.masked_lm else DistilBertModel(config)
    model.eval()
    model.save_pretrained(args.out_dir)  # config.json + model.safetensors (transformers 5 always writes safetensors)
    body = model.distilbert if args.masked_lm else model
    gen = torch.Generator().manual_seed(0)
    ids, mask = padded_ids(gen, [24, 17, 9, 3], 24, config.vocab_size)
    with torch.no_grad():
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
    save({"input_ids": ids, "attention_mask": mask, "cls": hidden[:, 0], "last_hidden_state": hidden},
         args.out_dir / "fixture.safetensors")


def cmd_vit(args) -> None:
    """A random timm ViT saved the way timm hub checkpoints are laid out, and its pooled features."""
    torch.manual_seed(0)
    model = timm.create_model(args.arch, pretrained=False, num_classes=0).eval()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    save(model.state_dict(), args.out_dir / "model.safetensors")
    config = {"architecture": args.arch, "num_classes": 0, "num_features": model.num_features}
    (args.out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        features = model(images)
    save({"images": images, "features": features}, args.out_dir / "fixture.safetensors")


def cmd_step(args) -> None:
    """One eCLIP training step's loss and gradients at the profile's sizes.

    Parity is checked with dropout off: the model is put in eval() mode before the forward pass
    (train.rs trains with the text tower's dropout on, which no two RNGs reproduce). The expert
    mixing weight `lam` is fixed in the batch file instead of drawn from Beta(0.3, 0.3).
    """
    profile = ref.PROFILES[args.profile]
    torch.manual_seed(args.seed)
    vocab = SMALL_DISTILBERT["vocab_size"]
    model = ref.build_model(profile, vocab).eval()
    save({**model.state_dict(), "harness.vocab_size": torch.tensor([vocab], dtype=torch.int64)},
         args.out_dir / "initial.safetensors")

    b, s, lc, ls = 6, profile["image_size"], profile["caption_len"], profile["snippet_len"]
    gen = torch.Generator().manual_seed(args.seed)

    def lengths(n: int, seq_len: int) -> list[int]:
        """Varied lengths in [2, seq_len], the first row full (no padding)."""
        out = torch.randint(2, seq_len + 1, (n,), generator=gen).tolist()
        return [seq_len] + out[1:]

    batch = {"images": torch.randn(b, 3, s, s, generator=gen)}
    batch["caption_ids"], batch["caption_mask"] = padded_ids(gen, lengths(b, lc), lc, vocab)
    plain = ref.Batch(batch["images"], batch["caption_ids"], batch["caption_mask"])
    expert, lam = None, 0.37
    if args.expert:
        # 1..3 random boxes per row, merged by max: the same heatmaps as the harness's expert batches.
        k = 3
        xy = torch.rand(b, k, 2, 2, generator=gen)
        boxes = torch.cat([xy.amin(dim=2), xy.amax(dim=2)], dim=-1)  # (B, K, 4) xyxy with x1<=x2, y1<=y2
        nboxes = torch.randint(1, k + 1, (b,), generator=gen)
        batch["expert_images"] = torch.randn(b, 3, s, s, generator=gen)
        batch["expert_boxes"], batch["expert_nboxes"] = boxes, nboxes
        batch["expert_heatmaps"] = ref.heatmaps(boxes, nboxes, s)
        batch["expert_caption_ids"], batch["expert_caption_mask"] = padded_ids(gen, lengths(b, lc), lc, vocab)
        batch["snippet_ids"], batch["snippet_mask"] = padded_ids(gen, lengths(b, ls), ls, vocab)
        batch["lam"] = torch.tensor([lam], dtype=torch.float64)
        expert = ref.ExpertBatch(batch["expert_images"], batch["expert_caption_ids"], batch["expert_caption_mask"],
                                 batch["expert_heatmaps"], batch["snippet_ids"], batch["snippet_mask"])
    save(batch, args.out_dir / "batch.safetensors")

    loss = ref.step_loss(model, plain, expert, lam)
    loss.backward()
    expected = {"loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        if p.grad is not None:
            expected[f"grad.{name}"] = p.grad
        elif name == "log_temperature":
            expected[f"grad.{name}"] = torch.zeros_like(p)
    # Raw (unnormalised) encoder outputs, to locate a mismatch when the loss differs.
    with torch.no_grad():
        expected["out.image"] = model.encode_image(plain.images)
        expected["out.text"] = model.encode_text(plain.caption_ids, plain.caption_mask)
        if expert is not None:
            expected["out.expert_image"] = model.encode_image(expert.images)
            expected["out.expert_text"] = model.encode_text(expert.caption_ids, expert.caption_mask)
            expected["out.masked_image"] = model.encode_masked_image(expert.images, expert.heatmaps)
            expected["out.snippet"] = model.encode_text(expert.snippet_ids, expert.snippet_mask)
    save(expected, args.out_dir / "expected.safetensors")
    n_grads = sum(k.startswith("grad.") for k in expected)
    print(f"loss {loss.item():.6f}; {n_grads} gradients of {len(list(model.parameters()))} parameters")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("text", help=cmd_text.__doc__)
    p.add_argument("--model-dir", type=Path, required=True, help="a transformers dir with tokenizer.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-length", type=int, default=32)
    p.set_defaults(run=cmd_text)

    p = sub.add_parser("distilbert", help=cmd_distilbert.__doc__)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--masked-lm", action="store_true", help="save a DistilBertForMaskedLM (keys `distilbert.*`)")
    p.set_defaults(run=cmd_distilbert)

    p = sub.add_parser("vit", help=cmd_vit.__doc__)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--arch", default="vit_small_patch16_224")
    p.set_defaults(run=cmd_vit)

    p = sub.add_parser("step", help=cmd_step.__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--profile", choices=sorted(ref.PROFILES), default="tests")
    p.add_argument("--expert", action=argparse.BooleanOptionalAction, default=True,
                   help="add an expert batch (default) or not (--no-expert)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_step)

    args = ap.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
