"""CycleGAN in TensorFlow 2: unpaired image-to-image translation that trains, resumes and exports."""

import os as _os

from cyclegan import cli as _cli
from cyclegan import quiet as _quiet

# XLA keeps what it compiles (--jit_compile's steps) in $CYCLEGAN_HOME/xla_cache, so that the
# same command run again loads it instead of compiling; a TF_XLA_FLAGS that names a cache wins.
# Here, as TensorFlow reads TF_XLA_FLAGS once, and a command's import of it comes next.
if "persistent_cache_directory" not in _os.environ.get("TF_XLA_FLAGS", ""):
  _os.environ["TF_XLA_FLAGS"] = (_os.environ.get("TF_XLA_FLAGS", "") + " --tf_xla_persistent_"
                                 f"cache_directory={_os.path.join(_cli.home(), 'xla_cache')}"
                                 ).strip()
_quiet.before_tensorflow()  # Here, as TF_CPP_MIN_LOG_LEVEL works only before TF loads.
