"""Networks: time embeddings, the small U-Net, classifiers."""
from .embedding import timestep_embedding

__all__ = ["timestep_embedding"]
