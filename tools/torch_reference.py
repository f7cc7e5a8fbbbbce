"""The PyTorch reference's training iteration, timed on this machine for a fair comparison.

  pip install torch==2.13.0
  python tools/torch_reference.py --size 256 --steps 5

Written from the layer list and recipe in shared/REFERENCE.md (ResNet-9, 70x70 PatchGAN, LSGAN,
cycle + identity, image pool, two Adams), in the reference's order of operations. Prints one
JSON line like tools/benchmark.py; `--what translate` times one generator forward instead.
"""

import argparse
import json
import random
import resource
import statistics
import time

import torch
from torch import nn


def resnet_generator(ngf=64, n_blocks=9, use_dropout=False):
  """nn.Sequential; wrapped as `model` its state-dict keys are the reference's (model.1, ...)."""
  def norm(c):
    return nn.InstanceNorm2d(c)

  class Block(nn.Module):
    def __init__(self, c):
      super().__init__()
      dropout = [nn.Dropout(0.5)] if use_dropout else []  # Shifts the second conv to index 6.
      self.conv_block = nn.Sequential(
          nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c), nn.ReLU(True), *dropout,
          nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm(c))

    def forward(self, x):
      return x + self.conv_block(x)

  layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), norm(ngf), nn.ReLU(True)]
  for mult in (1, 2):
    layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1), norm(ngf * mult * 2), nn.ReLU(True)]
  layers += [Block(ngf * 4) for _ in range(n_blocks)]
  for mult in (4, 2):
    layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1),
               norm(ngf * mult // 2), nn.ReLU(True)]
  layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
  return nn.Sequential(*layers)


def patch_discriminator(ndf=64, n_layers=3):
  layers = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
  for i in range(1, n_layers + 1):
    prev, mult = min(2 ** (i - 1), 8), min(2**i, 8)
    layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if i < n_layers else 1, 1),
               nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
  layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
  return nn.Sequential(*layers)


class Pool:
  def __init__(self, size=50):
    self.size, self.images = size, []

  def query(self, image):
    if len(self.images) < self.size:
      self.images.append(image)
      return image
    if random.random() > 0.5:
      i = random.randrange(self.size)
      old, self.images[i] = self.images[i], image
      return old
    return image


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=256, help="Square image side.")
  parser.add_argument("--steps", type=int, default=5, help="Timed steps after one warm-up step.")
  parser.add_argument("--what", choices=["train", "translate"], default="train",
                      help="train: one full iteration; translate: one generator forward.")
  args = parser.parse_args()
  g_a, g_b = resnet_generator(), resnet_generator()
  d_a, d_b = patch_discriminator(), patch_discriminator()
  opt_g = torch.optim.Adam(list(g_a.parameters()) + list(g_b.parameters()), 2e-4, betas=(0.5, 0.999))
  opt_d = torch.optim.Adam(list(d_a.parameters()) + list(d_b.parameters()), 2e-4, betas=(0.5, 0.999))
  mse, l1 = nn.MSELoss(), nn.L1Loss()
  pool_a, pool_b = Pool(), Pool()
  real_a = torch.rand(1, 3, args.size, args.size) * 2 - 1
  real_b = torch.rand(1, 3, args.size, args.size) * 2 - 1

  def gan(pred, real):
    return mse(pred, torch.ones_like(pred) if real else torch.zeros_like(pred))

  def train_step():
    fake_b = g_a(real_a)
    rec_a = g_b(fake_b)
    fake_a = g_b(real_b)
    rec_b = g_a(fake_a)
    for p in list(d_a.parameters()) + list(d_b.parameters()):
      p.requires_grad_(False)
    opt_g.zero_grad()
    loss_g = (gan(d_a(fake_b), True) + gan(d_b(fake_a), True) + 10 * l1(rec_a, real_a) +
              10 * l1(rec_b, real_b) + 5 * l1(g_a(real_b), real_b) + 5 * l1(g_b(real_a), real_a))
    loss_g.backward()
    opt_g.step()
    for p in list(d_a.parameters()) + list(d_b.parameters()):
      p.requires_grad_(True)
    opt_d.zero_grad()
    fb, fa = pool_b.query(fake_b.detach()), pool_a.query(fake_a.detach())
    loss_d = (0.5 * (gan(d_a(real_b), True) + gan(d_a(fb), False)) +
              0.5 * (gan(d_b(real_a), True) + gan(d_b(fa), False)))
    loss_d.backward()
    opt_d.step()
    return float(loss_g.detach())

  def translate_step():
    with torch.no_grad():
      return g_a(real_a)

  g_a.train(args.what == "train")
  step = train_step if args.what == "train" else translate_step

  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  print(json.dumps({
      "what": args.what, "impl": f"pytorch {torch.__version__}", "size": args.size,
      "batch_size": 1, "precision": "fp32", "threads": torch.get_num_threads(),
      "median_s": round(median, 4), "images_per_s": round(1 / median, 3),
      "min_s": round(min(times), 4), "max_s": round(max(times), 4), "steps": len(times),
      "first_step_s": round(first, 2),
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


if __name__ == "__main__":
  main()
