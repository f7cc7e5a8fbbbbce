"""CycleGAN in TensorFlow 2: unpaired image-to-image translation that trains, resumes and exports."""
