"""The PyTorch reference's training iteration, timed on this machine for a fair comparison.

  pip install torch==2.13.0
  python tools/torch_reference.py --size 256 --steps 5

Written from the reference's published architecture and recipe (ResNet-9, 70x70 PatchGAN, LSGAN
or BCE, cycle + identity, image pool, two Adams, linear lr decay), in the reference's order of
operations and with its names. The tests import it to check our iteration against it. Prints
one JSON line like tools/benchmark.py; `--what translate` times one generator forward instead.
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
  """The reference's ImagePool; size 0 passes images through."""

  def __init__(self, size=50):
    self.size, self.images = size, []

  def query(self, image):
    if self.size == 0:
      return image
    if len(self.images) < self.size:
      self.images.append(image)
      return image
    if random.random() > 0.5:
      i = random.randrange(self.size)
      old, self.images[i] = self.images[i], image
      return old
    return image


def adam(params):
  return torch.optim.Adam(params, 2e-4, betas=(0.5, 0.999))


def linear_scheduler(optimizer, n_epochs=100, n_epochs_decay=100, epoch_count=1):
  """The reference's `linear` lr policy, stepped once per epoch by its training loop."""
  def rule(epoch):
    return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)
  return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=rule)


class CycleGAN:
  """The reference's CycleGANModel as one training iteration uses it.

  Names as the reference's: G_A maps A->B, G_B maps B->A, D_A judges domain B (fake_B vs
  real_B), D_B judges domain A.
  """

  def __init__(self, ngf=64, n_blocks=9, ndf=64, n_layers_d=3, gan_mode="lsgan", lambda_a=10.0,
               lambda_b=10.0, lambda_identity=0.5, pool_size=50, optimizer=adam):
    self.G_A, self.G_B = resnet_generator(ngf, n_blocks), resnet_generator(ngf, n_blocks)
    self.D_A, self.D_B = patch_discriminator(ndf, n_layers_d), patch_discriminator(ndf, n_layers_d)
    self.optimizer_G = optimizer(list(self.G_A.parameters()) + list(self.G_B.parameters()))
    self.optimizer_D = optimizer(list(self.D_A.parameters()) + list(self.D_B.parameters()))
    self.criterion_gan = nn.MSELoss() if gan_mode == "lsgan" else nn.BCEWithLogitsLoss()
    self.l1 = nn.L1Loss()
    self.lambda_a, self.lambda_b, self.lambda_identity = lambda_a, lambda_b, lambda_identity
    self.fake_A_pool, self.fake_B_pool = Pool(pool_size), Pool(pool_size)

  def gan(self, prediction, target_is_real):
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    return self.criterion_gan(prediction, target)

  def set_requires_grad(self, nets, requires_grad):
    for net in nets:
      for p in net.parameters():
        p.requires_grad_(requires_grad)

  def backward_d(self, net_d, real, fake):
    loss = (self.gan(net_d(real), True) + self.gan(net_d(fake.detach()), False)) * 0.5
    loss.backward()
    return loss

  def optimize_parameters(self, real_A, real_B):
    """One iteration; returns every loss term as a float, by the reference's names."""
    fake_B = self.G_A(real_A)
    rec_A = self.G_B(fake_B)
    fake_A = self.G_B(real_B)
    rec_B = self.G_A(fake_A)
    self.set_requires_grad([self.D_A, self.D_B], False)
    self.optimizer_G.zero_grad()
    losses = {}
    if self.lambda_identity > 0:
      losses["idt_A"] = self.l1(self.G_A(real_B), real_B) * self.lambda_b * self.lambda_identity
      losses["idt_B"] = self.l1(self.G_B(real_A), real_A) * self.lambda_a * self.lambda_identity
    losses["G_A"] = self.gan(self.D_A(fake_B), True)
    losses["G_B"] = self.gan(self.D_B(fake_A), True)
    losses["cycle_A"] = self.l1(rec_A, real_A) * self.lambda_a
    losses["cycle_B"] = self.l1(rec_B, real_B) * self.lambda_b
    loss_G = sum(losses.values())
    loss_G.backward()
    self.optimizer_G.step()
    self.set_requires_grad([self.D_A, self.D_B], True)
    self.optimizer_D.zero_grad()
    losses["D_A"] = self.backward_d(self.D_A, real_B, self.fake_B_pool.query(fake_B))
    losses["D_B"] = self.backward_d(self.D_B, real_A, self.fake_A_pool.query(fake_A))
    self.optimizer_D.step()
    losses["G"] = loss_G
    return {k: float(v.detach()) for k, v in losses.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=256, help="Square image side.")
  parser.add_argument("--steps", type=int, default=5, help="Timed steps after one warm-up step.")
  parser.add_argument("--what", choices=["train", "translate"], default="train",
                      help="train: one full iteration; translate: one generator forward.")
  parser.add_argument("--channels_last", action="store_true",
                      help="Networks and images in channels_last memory format (PyTorch's "
                      "faster CPU layout for convolutions).")
  parser.add_argument("--bf16", action="store_true",
                      help="bfloat16 autocast (fast where the CPU has AVX512_BF16/AMX, and on "
                      "GPUs of compute capability 8.0 and up).")
  parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                      help="cuda: the first GPU, with cuDNN's autotuner on (PyTorch's fastest "
                      "GPU setting for fixed shapes).")
  args = parser.parse_args()
  device = torch.device(args.device)
  torch.backends.cudnn.benchmark = args.device == "cuda"
  model = CycleGAN()
  for net in (model.G_A, model.G_B, model.D_A, model.D_B):
    net.to(device)  # Keeps each parameter object, so the optimizers still hold them.
  real_a = torch.rand(1, 3, args.size, args.size, device=device) * 2 - 1
  real_b = torch.rand(1, 3, args.size, args.size, device=device) * 2 - 1
  if args.channels_last:
    for net in (model.G_A, model.G_B, model.D_A, model.D_B):
      net.to(memory_format=torch.channels_last)
    real_a = real_a.contiguous(memory_format=torch.channels_last)
    real_b = real_b.contiguous(memory_format=torch.channels_last)
  autocast = lambda: torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)
  # A GPU runs asynchronously: a step is timed to its last kernel's end.
  synchronize = torch.cuda.synchronize if args.device == "cuda" else lambda: None

  def train_step():
    with autocast():
      return model.optimize_parameters(real_a, real_b)

  def translate_step():
    with torch.no_grad(), autocast():
      return model.G_A(real_a)

  model.G_A.train(args.what == "train")
  run = train_step if args.what == "train" else translate_step

  def step():
    run()
    synchronize()

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
      "batch_size": 1, "precision": "bf16" if args.bf16 else "fp32",
      "memory_format": "channels_last" if args.channels_last else "nchw",
      "device": args.device, "threads": torch.get_num_threads(),
      "median_s": round(median, 4), "images_per_s": round(1 / median, 3),
      "min_s": round(min(times), 4), "max_s": round(max(times), 4), "steps": len(times),
      "first_step_s": round(first, 2),
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      **({"peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
         if args.device == "cuda" else {})}))


if __name__ == "__main__":
  main()
