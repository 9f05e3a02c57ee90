"""The Spatia network (paper Sec. 3.1.3) on diffusers' Wan2.2 blocks: transformer, sampler, VAE / text wrappers,
the ``Generator`` implementation and checkpoint conversion. Imports torch and diffusers (``model/`` only)."""

from spatia.model.spatia.generator import SpatiaGenerator, SpatiaGeneratorConfig
from spatia.model.spatia.sampler import FlowMatchingSampler, SamplerConfig, make_noise
from spatia.model.spatia.transformer import TINY_CONFIG, WAN22_TI2V_5B_CONFIG, SpatiaTransformer3DModel

__all__ = [
    "SpatiaGenerator", "SpatiaGeneratorConfig", "FlowMatchingSampler", "SamplerConfig", "make_noise",
    "SpatiaTransformer3DModel", "TINY_CONFIG", "WAN22_TI2V_5B_CONFIG",
]
