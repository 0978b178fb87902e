"""A PyTorch-trained checkpoint and its DDIM-20 outputs in f32 and under bf16 autocast, for the bf16 tests.

  python3 pytorch/make_trained_golden.py OUT_DIR   (needs torch, numpy, safetensors)

Trains the reference's UNet (base 16, t_dim 32, the golden files' model) with the reference's own train_step
(q_sample, ε-MSE, clipping at 1.0, AdamW) for STEPS steps on the first images of data/mnist, resized 28 -> 32 by
bilinear interpolation (not the reference's PIL resize: the fixture needs a trained model, not the recipe's exact
data), then samples DDIM-20 (eta 0) from fixed noise twice: in f32, and under
torch.autocast(dtype=torch.bfloat16), PyTorch's own mixed precision. Writes:

  trained-weights.safetensors  the state dict (PyTorch names), f32
  trained-ddim20.safetensors   xT [4,1,32,32]; out.fp32 and out.bf16, each [4,1,32,32]; torch_bf16_err, the
                               [max abs, mean abs] difference between the two PyTorch outputs
"""
import gzip
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddpm_ddim as ref  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

STEPS, BATCH, LR, IMAGES, N = 600, 64, 1e-3, 8192, 4


def mnist(path, count):
    with gzip.open(path, "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    x = torch.from_numpy(raw[: count * 784].astype(np.float32).reshape(count, 1, 28, 28) / 255.0)
    return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) * 2.0 - 1.0


def main(out_dir):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = mnist(os.path.join(os.path.dirname(__file__), "..", "data", "mnist", "train-images-idx3-ubyte.gz"), IMAGES)
    sched = ref.make_schedule(1000)
    model = ref.UNet(in_ch=1, base=16, t_dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    for step in range(STEPS):
        idx = torch.randint(0, IMAGES, (BATCH,))
        loss = ref.train_step(model, data[idx], sched, opt)
        if step % 100 == 0 or step == STEPS - 1:
            print(f"step {step}: loss {loss:.4f}")
    torch.manual_seed(11)
    xT = torch.randn(N, 1, 32, 32)
    outs = {}
    for name, ctx in [("fp32", torch.autocast("cpu", enabled=False)),
                      ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))]:
        torch.manual_seed(11)  # sample_ddim draws xT with torch.randn first: the same xT as above
        with ctx:
            outs[name] = ref.sample_ddim(model, sched, n=N, num_steps=20, eta=0.0).float()
    d = (outs["bf16"] - outs["fp32"]).abs()
    err = torch.tensor([d.max().item(), d.mean().item()])
    print(f"PyTorch bf16 autocast against f32: max abs {err[0]:.4f}, mean abs {err[1]:.5f}")
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(out_dir, "trained-weights.safetensors"))
    save_file({"xT": xT, "out.fp32": outs["fp32"], "out.bf16": outs["bf16"], "torch_bf16_err": err},
              os.path.join(out_dir, "trained-ddim20.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/golden")
