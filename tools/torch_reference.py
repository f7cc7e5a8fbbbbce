"""The PyTorch reference's training iteration, timed on this machine for a fair comparison.

  pip install -e ".[torch]"
  python tools/torch_reference.py --size 256 --steps 5

Written from the reference's published architecture and recipe (ResNet-9, 70x70 PatchGAN, LSGAN
or BCE, cycle + identity, image pool, two Adams, linear lr decay), in the reference's order of
operations and with its names; CUT's networks and PatchNCE loss likewise from its authors'
published method (anti-aliased sampling, MLP heads on encoder layers, InfoNCE over patches).
The tests import it to check ours against it. Prints one JSON line like tools/benchmark.py;
`--what translate` times one generator forward instead.
"""

import argparse
import json
import math
import random
import resource
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def binomial_filter(taps):
  """The taps x taps binomial blur (outer product of Pascal's row), summing to 1."""
  row = torch.tensor([math.comb(taps - 1, i) for i in range(taps)], dtype=torch.float32)
  square = row[:, None] * row[None, :]
  return square / square.sum()


class Downsample(nn.Module):
  """CUT's anti-aliased stride 2: reflect-pad 1, a 3x3 binomial blur per channel, every second
  pixel. The filter is a buffer, `filt`, as in the authors' state dicts."""

  def __init__(self, channels):
    super().__init__()
    self.register_buffer("filt", binomial_filter(3)[None, None].repeat(channels, 1, 1, 1))

  def forward(self, x):
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2,
                    groups=x.shape[1])


class Upsample(nn.Module):
  """CUT's anti-aliased x2 upsampling: replicate-pad 1, a transposed 4x4 binomial blur (x4, so
  that each output phase sums to 1) per channel at stride 2, cropped to twice the input."""

  def __init__(self, channels):
    super().__init__()
    self.register_buffer("filt", (binomial_filter(4) * 4)[None, None].repeat(channels, 1, 1, 1))

  def forward(self, x):
    y = F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.filt, stride=2,
                           padding=2, groups=x.shape[1])
    return y[:, :, 1:-1, 1:-1]


def resnet_generator(ngf=64, n_blocks=9, use_dropout=False, antialias=False):
  """nn.Sequential; wrapped as `model` its state-dict keys are the reference's (model.1, ...).
  antialias: CUT's generator, whose down and up layers are stride-1 convolutions beside
  Downsample and Upsample (filt buffers at model.7, 11, 21 and 25 at two down layers)."""
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
    c_in, c_out = ngf * mult, ngf * mult * 2
    if antialias:
      layers += [nn.Conv2d(c_in, c_out, 3, 1, 1), norm(c_out), nn.ReLU(True), Downsample(c_out)]
    else:
      layers += [nn.Conv2d(c_in, c_out, 3, 2, 1), norm(c_out), nn.ReLU(True)]
  layers += [Block(ngf * 4) for _ in range(n_blocks)]
  for mult in (4, 2):
    c_in, c_out = ngf * mult, ngf * mult // 2
    if antialias:
      layers += [Upsample(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1), norm(c_out), nn.ReLU(True)]
    else:
      layers += [nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=1), norm(c_out),
                 nn.ReLU(True)]
  layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
  return nn.Sequential(*layers)


def patch_discriminator(ndf=64, n_layers=3, antialias=False):
  """antialias: CUT's, each stride-2 convolution at stride 1 followed by Downsample."""
  def down(conv_in, conv_out, *between):
    if antialias:
      return [nn.Conv2d(conv_in, conv_out, 4, 1, 1), *between, nn.LeakyReLU(0.2, True),
              Downsample(conv_out)]
    return [nn.Conv2d(conv_in, conv_out, 4, 2, 1), *between, nn.LeakyReLU(0.2, True)]

  layers = down(3, ndf)
  for i in range(1, n_layers + 1):
    prev, mult = min(2 ** (i - 1), 8), min(2**i, 8)
    if i < n_layers:
      layers += down(ndf * prev, ndf * mult, nn.InstanceNorm2d(ndf * mult))
    else:
      layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), nn.InstanceNorm2d(ndf * mult),
                 nn.LeakyReLU(0.2, True)]
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


def encode(generator, x, layers):
  """The outputs of the generator's modules at indices `layers` (0: the padded input), as
  CUT's encoder gives them to PatchNCE; stops after the last."""
  feats = []
  for index, module in enumerate(generator):
    x = module(x)
    if index in layers:
      feats.append(x)
      if index == layers[-1]:
        break
  return feats


def xavier_init(net, gain=0.02):
  """CUT's init: Xavier normal weights (gain 0.02) for every convolution and linear layer,
  zero biases."""
  for module in net.modules():
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
      nn.init.xavier_normal_(module.weight, gain)
      nn.init.zeros_(module.bias)


class PatchSampler(nn.Module):
  """CUT's netF (mlp_sample): per encoder layer, the features at sampled positions (the same
  positions for every image in the batch), through Linear-ReLU-Linear, L2-normalised. The
  heads are made at the first call, when the layers' widths are known."""

  def __init__(self, units=256):
    super().__init__()
    self.units, self.heads = units, None

  def forward(self, feats, num_patches, patch_ids=None):
    if self.heads is None:
      self.heads = nn.ModuleList(
          nn.Sequential(nn.Linear(f.shape[1], self.units), nn.ReLU(),
                        nn.Linear(self.units, self.units))
          for f in feats).to(feats[0].dtype)
      xavier_init(self.heads)
    samples, ids = [], []
    for i, feat in enumerate(feats):
      # The authors take positions from feat.permute(0, 2, 3, 1).flatten(1, 2): the same
      # values, but its gradient reaches the encoder in channels-last strides, for which
      # PyTorch 2.13's CPU instance_norm backward returns wrong input gradients (140% off
      # on a [1, 32, 16, 16] map). Indexing the NCHW map gives the same samples, contiguous.
      flat = feat.flatten(2)
      patch_id = (torch.as_tensor(np.random.permutation(flat.shape[2])[:num_patches])
                  if patch_ids is None else torch.as_tensor(patch_ids[i]))
      x = self.heads[i](flat[:, :, patch_id].transpose(1, 2).flatten(0, 1))
      samples.append(x / (x.pow(2).sum(1, keepdim=True).pow(0.5) + 1e-7))
      ids.append(patch_id)
    return samples, ids


def patch_nce_loss(query, key, batch_size, temperature=0.07):
  """Per patch: cross entropy of picking the key at the query's own position among the keys
  of all positions of the same image (the key is detached)."""
  key = key.detach()
  n, dim = query.shape
  positive = (query * key).sum(1, keepdim=True)
  query, key = query.view(batch_size, -1, dim), key.view(batch_size, -1, dim)
  negative = torch.bmm(query, key.transpose(2, 1))
  negative = negative.masked_fill(torch.eye(query.shape[1], dtype=torch.bool)[None], -10.0)
  logits = torch.cat([positive, negative.flatten(0, 1)], 1) / temperature
  return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long), reduction="none")


class CUT:
  """CUT's (and FastCUT's) model as one training iteration uses it: the discriminator
  updates first, then the generator and the patch heads with the updated discriminator."""

  def __init__(self, ngf=64, n_blocks=9, ndf=64, n_layers_d=3, lambda_gan=1.0, lambda_nce=1.0,
               nce_idt=True, nce_layers=(0, 4, 8, 12, 16), num_patches=256,
               flip_equivariance=False, temperature=0.07, antialias=True, optimizer=adam):
    self.G = resnet_generator(ngf, n_blocks, antialias=antialias)
    self.D = patch_discriminator(ndf, n_layers_d, antialias=antialias)
    self.F = PatchSampler()
    xavier_init(self.G)
    xavier_init(self.D)
    self.optimizer, self.optimizer_F = optimizer, None
    self.optimizer_G = optimizer(self.G.parameters())
    self.optimizer_D = optimizer(self.D.parameters())
    self.criterion_gan = nn.MSELoss()
    self.lambda_gan, self.lambda_nce, self.nce_idt = lambda_gan, lambda_nce, nce_idt
    self.nce_layers, self.num_patches, self.temperature = list(nce_layers), num_patches, temperature
    self.flip_equivariance = flip_equivariance

  @classmethod
  def fastcut(cls, **kwargs):
    return cls(**{**dict(lambda_nce=10.0, nce_idt=False, flip_equivariance=True), **kwargs})

  def gan(self, prediction, target_is_real):
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    return self.criterion_gan(prediction, target)

  def forward(self, real_A, real_B, flipped):
    real = torch.cat([real_A, real_B]) if self.nce_idt else real_A
    if flipped:
      real = torch.flip(real, [3])
    fake = self.G(real)
    return fake[:len(real_A)], fake[len(real_A):] if self.nce_idt else None

  def nce(self, src, tgt, flipped, patch_ids=None):
    """Mean over layers of lambda_nce x the mean per-patch loss; the query from `tgt`
    (translated), the keys from `src` (its input)."""
    feat_q = encode(self.G, tgt, self.nce_layers)
    if flipped:
      feat_q = [torch.flip(f, [3]) for f in feat_q]
    feat_k = encode(self.G, src, self.nce_layers)
    keys, ids = self.F(feat_k, self.num_patches, patch_ids)
    queries, _ = self.F(feat_q, self.num_patches, ids)
    total = sum((patch_nce_loss(q, k, len(src), self.temperature) * self.lambda_nce).mean()
                for q, k in zip(queries, keys))
    return total / len(self.nce_layers)

  def losses_g(self, real_A, real_B, fake_B, idt_B, flipped, patch_ids):
    losses = {"G_GAN": self.gan(self.D(fake_B), True) * self.lambda_gan,
              "NCE": self.nce(real_A, fake_B, flipped, patch_ids and patch_ids[0])}
    if self.nce_idt:
      losses["NCE_Y"] = self.nce(real_B, idt_B, flipped, patch_ids and patch_ids[1])
    nce_both = (losses["NCE"] + losses["NCE_Y"]) * 0.5 if self.nce_idt else losses["NCE"]
    losses["G"] = losses["G_GAN"] + nce_both
    return losses

  def loss_d(self, real_B, fake_B):
    return (self.gan(self.D(fake_B.detach()), False) + self.gan(self.D(real_B), True)) * 0.5

  def data_dependent_initialize(self, real_A, real_B, patch_ids=None):
    """The authors' first call: a forward pass and both backward passes (no step), which makes
    the patch heads; then their optimizer."""
    fake_B, idt_B = self.forward(real_A, real_B, False)
    self.loss_d(real_B, fake_B).backward()
    self.losses_g(real_A, real_B, fake_B, idt_B, False, patch_ids)["G"].backward()
    self.optimizer_F = self.optimizer(self.F.parameters())

  def optimize_parameters(self, real_A, real_B, patch_ids=None, flipped=None):
    """One iteration; returns every loss term as a float. patch_ids: ([ids per layer] for
    NCE, [ids per layer] for NCE_Y) instead of random draws; flipped: FastCUT's coin."""
    if flipped is None:
      flipped = self.flip_equivariance and np.random.random() < 0.5
    fake_B, idt_B = self.forward(real_A, real_B, flipped)
    for p in self.D.parameters():
      p.requires_grad_(True)
    self.optimizer_D.zero_grad()
    loss_d = self.loss_d(real_B, fake_B)
    loss_d.backward()
    self.optimizer_D.step()
    for p in self.D.parameters():
      p.requires_grad_(False)
    self.optimizer_G.zero_grad()
    self.optimizer_F.zero_grad()
    losses = self.losses_g(real_A, real_B, fake_B, idt_B, flipped, patch_ids)
    losses["G"].backward()
    self.optimizer_G.step()
    self.optimizer_F.step()
    losses["D"] = loss_d
    return {k: float(v.detach()) for k, v in losses.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=256, help="Square image side.")
  parser.add_argument("--steps", type=int, default=5, help="Timed steps after one warm-up step.")
  parser.add_argument("--what", choices=["train", "translate"], default="train",
                      help="train: one full iteration; translate: one generator forward.")
  parser.add_argument("--model", choices=["cycle_gan", "cut", "fastcut"], default="cycle_gan",
                      help="Whose iteration (or generator): the reference CycleGAN's, or CUT's "
                      "or FastCUT's as their authors' code runs it.")
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
  model = {"cycle_gan": CycleGAN, "cut": CUT, "fastcut": CUT.fastcut}[args.model]()
  nets = [model.G_A, model.G_B, model.D_A, model.D_B] if args.model == "cycle_gan" else [
      model.G, model.D]
  for net in nets:
    net.to(device)  # Keeps each parameter object, so the optimizers still hold them.
  real_a = torch.rand(1, 3, args.size, args.size, device=device) * 2 - 1
  real_b = torch.rand(1, 3, args.size, args.size, device=device) * 2 - 1
  if args.model != "cycle_gan":  # the authors' first call: makes the patch heads
    model.data_dependent_initialize(real_a, real_b)
    model.F.to(device)
  if args.channels_last:
    for net in nets:
      net.to(memory_format=torch.channels_last)
    real_a = real_a.contiguous(memory_format=torch.channels_last)
    real_b = real_b.contiguous(memory_format=torch.channels_last)
  autocast = lambda: torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)
  # A GPU runs asynchronously: a step is timed to its last kernel's end.
  synchronize = torch.cuda.synchronize if args.device == "cuda" else lambda: None

  def train_step():
    with autocast():
      return model.optimize_parameters(real_a, real_b)

  generator = model.G_A if args.model == "cycle_gan" else model.G

  def translate_step():
    with torch.no_grad(), autocast():
      return generator(real_a)

  generator.train(args.what == "train")
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
      "what": args.what, "model": args.model, "impl": f"pytorch {torch.__version__}",
      "size": args.size,
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
