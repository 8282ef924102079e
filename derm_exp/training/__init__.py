"""Training: losses, mixup/cutmix, schedulers, checkpoints and the train/eval loop."""
