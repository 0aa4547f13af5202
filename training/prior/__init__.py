"""The prior pipeline (the shipped model's): a frozen pretrained trunk's outputs cached once
per photo (training/data/features.py), and the Swin and head above it trained on them
(`prior` stages)."""
