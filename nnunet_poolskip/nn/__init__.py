"""Pool Skip as network building blocks: the module family, its lean kernels, injection into
dynamic-network-architectures U-Nets, and MONAI's V-Net with Pool Skip.

Pure torch plus dynamic-network-architectures and MONAI: nothing here imports nnU-Net (``nnunetv2``) or any
other part of this package, so the modules can be used in any PyTorch code.
"""
from nnunet_poolskip.nn.inject import inject_pool_skip
from nnunet_poolskip.nn.pool_skip import PoolSkip1d, PoolSkip2d, PoolSkip3d

__all__ = ["PoolSkip1d", "PoolSkip2d", "PoolSkip3d", "inject_pool_skip"]
