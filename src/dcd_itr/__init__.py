"""dcd-itr: Dynamic Contrastive Distillation for fast image-text retrieval."""

__version__ = "0.1.0"
