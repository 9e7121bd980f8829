"""Drop-in ``torch.nn`` modules backed by fastattn's fused kernels."""
from fastattn.nn.attention import CausalSelfAttention, MultiheadAttention
from fastattn.nn.feed_forward import FeedForward, SwiGLU

__all__ = ["MultiheadAttention", "CausalSelfAttention", "SwiGLU", "FeedForward"]
