"""fastattn's functional API (re-exported at the top level)."""
from fastattn.functional.attention import (
    flash_attn_func,
    flash_attn_varlen_func,
    scaled_dot_product_attention,
)
from fastattn.functional.kvcache import flash_attn_with_kvcache
from fastattn.functional.activations import geglu, swiglu
from fastattn.functional.ffn import bias_gelu, feed_forward
from fastattn.functional.softmax import scaled_masked_softmax

__all__ = [
    "scaled_dot_product_attention", "flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache",
    "scaled_masked_softmax", "swiglu", "geglu", "bias_gelu", "feed_forward",
]
