"""Installed as ``nnunet_poolskip.ext_trainers`` so that a wheel carries the folder ``env`` points to."""
