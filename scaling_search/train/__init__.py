"""Training: the proxy training loop and its on-device augmentation."""
