"""CycleGAN in TensorFlow 2: unpaired image-to-image translation that trains, resumes and exports."""

from cyclegan import quiet as _quiet

_quiet.before_tensorflow()  # Here, as TF_CPP_MIN_LOG_LEVEL works only before TF loads.
