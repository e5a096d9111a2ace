"""Plans presets (JSON data), installed as ``nnunet_poolskip.plans_presets``."""
