"""``nnunet-poolskip benchmark``: the paper's Table 3 protocol (see runner.py); models in protocol.py,
profiles in profiles.py, SLURM scripts in slurm.py, run.json in runinfo.py, tables in report.py."""
