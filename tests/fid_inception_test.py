"""The FID Inception against pytorch-fid itself: its features and its FID on the same files.

The weights are random (the real file is 95 MB and downloaded), in the layout of pytorch-fid's
file, and pytorch-fid loads them unmodified from the torch hub cache it would download to.
"""

import re

import numpy as np
import pytest
from PIL import Image, ImageFilter
from conftest import photo

torch = pytest.importorskip("torch", reason="PyTorch is the optional [torch] extra")
torchvision = pytest.importorskip("torchvision", reason="pytorch-fid's network is torchvision's")
pytorch_fid = pytest.importorskip("pytorch_fid", reason="the reference FID implementation")

from pytorch_fid import fid_score  # noqa: E402
from pytorch_fid.inception import InceptionV3  # noqa: E402

from cyclegan import fid_inception  # noqa: E402
from cyclegan import metrics  # noqa: E402


def _random_state_dict(seed=0):
  """pytorch-fid's keys and shapes (the FID blocks have torchvision's parameters), filled so
  that activations neither explode nor die through 94 layers: He-scaled convolutions, norms
  near identity."""
  net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                        init_weights=False)
  rng = np.random.default_rng(seed)
  state = {}
  for key, value in net.state_dict().items():
    shape = tuple(value.shape)
    if key.endswith("num_batches_tracked"):
      state[key] = value
      continue
    if key.endswith("conv.weight"):
      array = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
    elif key.endswith(("bn.weight", "running_var")):
      array = rng.uniform(0.5, 1.5, shape)
    else:
      array = rng.normal(0, 0.1, shape)
    state[key] = torch.from_numpy(array.astype(np.float32))
  return state


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
  """(torch state dict, pytorch-fid's InceptionV3, ours from the dict's file), with TORCH_HOME
  set for the module's tests so that pytorch-fid finds the weights in its hub cache, offline."""
  tmp = tmp_path_factory.mktemp("fid_inception")
  state = _random_state_dict()
  path = tmp / fid_inception.FILE_NAME
  torch.save(state, path)
  (tmp / "torch_home" / "hub" / "checkpoints").mkdir(parents=True)
  torch.save(state, tmp / "torch_home" / "hub" / "checkpoints" / fid_inception.FILE_NAME)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("TORCH_HOME", str(tmp / "torch_home"))
    reference = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    yield state, reference, fid_inception.load(str(path))


def _reference_features(reference, images):
  """pytorch-fid's pool3 features of same-size uint8 images, fed as its loader does ([0, 1])."""
  x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
  with torch.no_grad():
    return reference(x)[0][:, :, 0, 0].double().numpy()


def test_features_match_pytorch_fid(networks):
  """Up- and downsampled to 299. Measured: 7e-7 of the largest feature (float32 round-off)."""
  _, reference, ours = networks
  groups = [[photo(256, 256, 0), photo(256, 256, 1)], [photo(180, 240, 2)], [photo(340, 420, 3)]]
  got = np.split(metrics.inception_features(ours, sum(groups, [])), [2, 3])
  for images, features in zip(groups, got):
    want = _reference_features(reference, images)
    assert np.isfinite(want).all() and (want > 1e-3).mean() > 0.5  # weights that keep signal
    relative = np.abs(features - want).max() / np.abs(want).max()
    l2 = np.linalg.norm(features - want, axis=1) / np.linalg.norm(want, axis=1)
    print(f"{images[0].shape}: max |diff| / max |feature| {relative:.2e}, relative L2 {l2.max():.2e}")
    assert relative <= 1e-4


def _colour_fields(folder, count, seed, shifted):
  """Smooth random colour fields as PNGs; shifted: another distribution (channels rotated,
  blurred). Returns them as uint8 arrays."""
  folder.mkdir()
  rng = np.random.default_rng(seed)
  images = []
  for i in range(count):
    field = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(
        (96, 96), Image.Resampling.BICUBIC)
    if shifted:
      field = Image.fromarray(np.roll(np.asarray(field), 1, axis=2)).filter(
          ImageFilter.GaussianBlur(3))
    field.save(folder / f"{i:03d}.png")
    with Image.open(folder / f"{i:03d}.png") as image:
      images.append(np.asarray(image.convert("RGB")))
  return images


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 40 samples: covariances of rank 39
def test_fid_matches_pytorch_fid_on_the_same_files(networks, tmp_path):
  """Slow at any number of images: the Frechet distance of 2048-d covariances (on 2 shared
  cores pytorch-fid's sqrtm took 20-55 s, metrics.fid's eigenvalues 11-14 s). Measured:
  1.2e-6 relative."""
  _, _, ours = networks
  first = _colour_fields(tmp_path / "a", 40, 0, shifted=False)
  second = _colour_fields(tmp_path / "b", 40, 1, shifted=True)
  want = fid_score.calculate_fid_given_paths([str(tmp_path / "a"), str(tmp_path / "b")],
                                             batch_size=40, device="cpu", dims=2048, num_workers=0)
  features = metrics.inception_features(ours, first + second)
  got = metrics.fid(features[:40], features[40:])
  print(f"FID: pytorch-fid {want:.6f}, ours {got:.6f}, relative {abs(got - want) / want:.2e}")
  assert got == pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("change,key", [
    ("drop", "Mixed_7c.branch_pool.bn.running_var"),
    ("reshape", "Mixed_6b.branch7x7_2.conv.weight"),
    ("add", "AuxLogits.fc.weight")])
def test_load_names_the_file_and_the_first_key_that_does_not_fit(networks, tmp_path, change, key):
  state = dict(networks[0])
  if change == "drop":
    del state[key]
  elif change == "reshape":
    state[key] = state[key].transpose(2, 3)  # (1, 7) -> (7, 1): a kernel of the wrong axis
  else:
    state[key] = torch.zeros(1008, 768)
  path = tmp_path / "bad.pth"
  torch.save(state, path)
  with pytest.raises(ValueError, match=re.escape(key)) as raised:
    fid_inception.load(str(path))
  assert str(path) in str(raised.value) and "\n" not in str(raised.value)
