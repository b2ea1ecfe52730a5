"""Contrastive ECG-text pretraining: loss, augmentation, text-feature cache, task, trainer, DDP."""
