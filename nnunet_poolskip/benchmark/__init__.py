"""``nnunet-poolskip benchmark``: the paper's Table 3 protocol, resumable, locally or on SLURM.

runner.py orchestrates the three stages prepare.py, train.py and finish.py, each made of steps (steps.py); a
fold's state comes from nnU-Net's checkpoints (training_runs.py). The request: config.py, with the models and
data set kinds of protocol.py, the profiles of profiles.py and nnU-Net's folders of workspace.py. run.json:
runinfo.py; tables: report.py; SLURM scripts: slurm.py.
"""
