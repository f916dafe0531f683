"""Writes a perceiver-io reference dump (the layout of ../shared/fixtures) for a given config.

Needs PyTorch and perceiver-io 0.11.0 (see ../shared/bench/README.md for the install). Used to
make the extra dumps under tests/fixtures/, which `perceiver verify` must also pass:

    python tools/make_reference_dump.py OUT_DIR '{"abs_pos_emb": false, ...}' [SEED]

The JSON overrides fields of the base config below. The dump holds:
- config.json: the library config, the case sizes, notes;
- model.safetensors: the state dict under the library's names (layer norms and the output bias
  are moved away from 1 and 0 so that they are tested);
- case.safetensors: input_ids, labels (the next token of each latent), logits, loss (mean
  cross-entropy), grad.<name> for every parameter, and greedy: gen_prompt tokens of row 0
  followed by gen_tokens greedy tokens, each from a full forward pass over the last
  max_seq_len tokens with min(len, max_latents) latents.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from perceiver.model.core import CausalSequenceModel, CausalSequenceModelConfig

BASE = dict(
    num_heads=4,
    max_heads_parallel=None,
    num_self_attention_layers=2,
    num_self_attention_rotary_layers=1,
    self_attention_widening_factor=4,
    cross_attention_widening_factor=4,
    cross_attention_dropout=0.0,
    post_attention_dropout=0.0,
    residual_dropout=0.0,
    activation_checkpointing=False,
    activation_offloading=False,
    vocab_size=64,
    max_seq_len=32,
    max_latents=8,
    num_channels=32,
    output_norm=False,
    output_bias=True,
    abs_pos_emb=True,
    init_scale=0.1,
)
CASE = dict(batch=2, seq_len=24, prefix_len=16, gen_prompt=10, gen_tokens=30)


def main(out_dir, overrides, seed):
    torch.manual_seed(seed)
    cfg = dict(BASE, **overrides.get("config", {}))
    case = dict(CASE, **overrides.get("case", {}))
    model = CausalSequenceModel(CausalSequenceModelConfig(**cfg)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
        if cfg["output_bias"]:
            model.output_adapter.bias.add_(0.1 * torch.randn_like(model.output_adapter.bias))

    b, n, p = case["batch"], case["seq_len"], case["prefix_len"]
    tokens = torch.randint(0, cfg["vocab_size"], (b, n + 1))
    input_ids, labels = tokens[:, :n], tokens[:, p + 1 :]
    logits = model(input_ids, prefix_len=p).logits
    loss = F.cross_entropy(logits.reshape(-1, cfg["vocab_size"]), labels.reshape(-1))
    loss.backward()

    seq = input_ids[0, : case["gen_prompt"]].tolist()
    with torch.no_grad():
        for _ in range(case["gen_tokens"]):
            window = seq[-cfg["max_seq_len"] :]
            latents = min(len(window), cfg["max_latents"])
            out = model(torch.tensor([window]), prefix_len=len(window) - latents).logits
            seq.append(int(out[0, -1].argmax()))

    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, "model.safetensors"))
    tensors = {
        "input_ids": input_ids.contiguous(),
        "labels": labels.contiguous(),
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(1),
        "greedy": torch.tensor(seq),
    }
    for name, param in model.named_parameters():
        tensors[f"grad.{name}"] = param.grad.contiguous()
    save_file(tensors, os.path.join(out_dir, "case.safetensors"), metadata={k: str(v) for k, v in case.items()})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(
            {
                "library": "perceiver-io 0.11.0 (PyTorch), CausalSequenceModel",
                "config": cfg,
                "case": case,
                "activation": "gelu (exact erf)",
                "loss": "mean cross-entropy over all latent positions",
                "made_by": "tools/make_reference_dump.py, seed %d" % seed,
            },
            f,
            indent=2,
        )
    print(f"{out_dir}: loss {loss.item():.6f}, {len(tensors)} tensors")


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}, int(sys.argv[3]) if len(sys.argv) > 3 else 0)
