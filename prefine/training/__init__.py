"""Training: the resumable loop, pretraining and fine-tuning on it, the device, the per-epoch log."""
