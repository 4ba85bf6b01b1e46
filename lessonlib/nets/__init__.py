"""Networks: time embeddings, the small U-Net, classifiers."""
from .embedding import TimeMLP, timestep_embedding

__all__ = ["TimeMLP", "timestep_embedding"]
