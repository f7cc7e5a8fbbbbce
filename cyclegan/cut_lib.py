"""CUT's and FastCUT's training iteration (Park et al., ECCV 2020), as its authors' code runs it.

One generator (A->B) and one discriminator (judging B). The discriminator updates first, on
real B and the translation; then the generator and the patch heads update together, against
the updated discriminator, on LSGAN plus PatchNCE: the translation must keep, patch by patch,
what its input had (and with NCE identity, B through the generator keeps B). Losses are per
example, divided by the global batch, as in train_lib.
"""

from typing import NamedTuple

import keras
import tensorflow as tf

from cyclegan import cut_models
from cyclegan import losses
from cyclegan import models
from cyclegan import patch_nce
from cyclegan import seeds


HEAD_UNITS = 256  # the authors' netF_nc


def build_networks(config):
  """{"generator_a2b", "discriminator_b", "patch_heads"} at the authors' init, in
  config.precision (resolved). The heads are built from the encoder layers' widths before the
  first step (the authors' at it, from the same widths), so that a checkpoint holds them."""
  dtype = models.POLICIES[config.precision]
  build_generator, build_discriminator = cut_models.networks(config.antialias)
  generator = build_generator(config.ngf, config.n_blocks, "generator_a2b", dtype)
  discriminator = build_discriminator(config.ndf, config.n_layers_d, "discriminator_b", dtype)
  cut_models.xavier_init(generator, config.seed)
  cut_models.xavier_init(discriminator, config.seed + 1)
  heads = patch_nce.PatchHeads(HEAD_UNITS, seed=config.seed + 2, name="patch_heads", dtype=dtype)
  heads.build([tuple(output.shape) for output in cut_models.nce_encoder(generator).outputs])
  return {"generator_a2b": generator, "discriminator_b": discriminator, "patch_heads": heads}


class Encoders(NamedTuple):
  """The generator's PatchNCE features of an image (`features`, for the translations), and
  the generator returning them beside its translation (`translate_with_features`): keys of
  the images it translates come out of that pass."""
  features: keras.Model
  translate_with_features: keras.Model


def build_encoders(generator):
  return Encoders(cut_models.nce_encoder(generator), cut_models.with_nce_features(generator))


def replica_step(config, networks, encoders, optimizer_g, optimizer_d, real_a, real_b, seed,
                 global_batch, patch_ids=None, flipped=None):
  """One iteration on one replica's batch; returns the global mean of each loss.

  encoders: build_encoders(generator). seed: [2] int, this step's and replica's; it draws
  FastCUT's coin and the patches. patch_ids and flipped replace those draws (tests):
  ([ids per layer] for A's PatchNCE, [ids per layer] for B's) and a bool.
  """
  generator, discriminator = networks["generator_a2b"], networks["discriminator_b"]
  average = lambda per_example: tf.reduce_sum(per_example) / global_batch
  if flipped is None and config.flip_equivariance:
    flipped = seeds.integer(seeds.fold_in(seed, 0), 2) > 0
  flipped = False if flipped is None else flipped
  nce_seeds = [seeds.fold_in(seed, i) for i in (1, 2)]
  ids = patch_ids or (None, None)
  nce = lambda i, source, translated, keys: patch_nce.nce_loss(
      encoders.features, networks["patch_heads"], source, translated, nce_seeds[i],
      config.lambda_nce, flipped, config.num_patches, ids[i], keys)

  batch = tf.shape(real_a)[0]
  with tf.GradientTape() as g_tape:
    real = tf.concat([real_a, real_b], 0) if config.nce_idt else real_a
    if config.flip_equivariance:  # G may see the images mirrored: their keys need a pass
      fake, keys = generator(patch_nce.mirrored_if(flipped, real), training=True), None
    else:
      fake, *keys = encoders.translate_with_features(real, training=True)
    keys_of = lambda part: None if keys is None else [
        k[:batch] if part == 0 else k[batch:] for k in keys]
    fake_b = fake[:batch]
    with g_tape.stop_recording(), tf.GradientTape() as d_tape:
      d_loss = average(losses.discriminator_loss(
          discriminator(real_b, training=True),
          discriminator(tf.stop_gradient(fake_b), training=True), config.gan_mode))
      scaled_d_loss = optimizer_d.scale_loss(d_loss)
    d_variables = discriminator.trainable_variables
    optimizer_d.apply(d_tape.gradient(scaled_d_loss, d_variables), d_variables)
    terms = {"g_gan": losses.adversarial_loss(discriminator(fake_b, training=True), True,
                                              config.gan_mode),
             "nce": nce(0, real_a, fake_b, keys_of(0))}
    nce_both = terms["nce"]
    if config.nce_idt:
      terms["nce_y"] = nce(1, real_b, fake[batch:], keys_of(1))
      nce_both = (terms["nce"] + terms["nce_y"]) * 0.5
    g_loss = average(terms["g_gan"] + nce_both)
    scaled_g_loss = optimizer_g.scale_loss(g_loss)
  g_variables = generator_variables(networks)
  optimizer_g.apply(g_tape.gradient(scaled_g_loss, g_variables), g_variables)
  out = {k: average(v) for k, v in terms.items()}
  out["g_total"], out["d_total"] = g_loss, d_loss
  return out


def generator_variables(networks):
  """What the generator's optimizer updates: the generator and the patch heads (the authors
  give the heads an Adam of their own with the same settings: the same updates)."""
  return networks["generator_a2b"].trainable_variables + networks["patch_heads"].trainable_variables
