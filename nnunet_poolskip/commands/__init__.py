"""Subcommands of the ``nnunet-poolskip`` console script (see ``nnunet_poolskip.cli``)."""
