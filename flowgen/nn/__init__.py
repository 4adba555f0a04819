"""Networks with the flowgen model signature ``model(x_t, t[, cond])``.

``x_t`` is ``(B, *D)``, ``t`` is ``(B,)`` (any finite real: ``t ∈ [0, 1]``, ``log σ``, log-SNR),
``cond`` is an optional ``(B,)`` long tensor of class labels where ``model.null_class`` (equal to
``num_classes``) is the learned null label used for classifier-free guidance and ``cond=None``
means the null label. Any ``torch.nn.Module`` with this signature works with the rest of flowgen.

* :class:`MLP` — vector data ``(B, dim)``.
* :class:`UNet` — images ``(B, C, H, W)``, 8×8 up to 64×64.
* :class:`DiT` — a small diffusion transformer for images.
* :class:`SinusoidalEmbedding`, :class:`FourierEmbedding`, :class:`ClassEmbedding`, :func:`drop_labels`.
"""

from .dit import DiT
from .embeddings import ClassEmbedding, FourierEmbedding, SinusoidalEmbedding, drop_labels
from .mlp import MLP
from .unet import UNet

__all__ = ["MLP", "UNet", "DiT", "SinusoidalEmbedding", "FourierEmbedding", "ClassEmbedding", "drop_labels"]
