"""Evaluation: FID/KID/IS through torch-fidelity, CLIP score, domain feature extractors."""
