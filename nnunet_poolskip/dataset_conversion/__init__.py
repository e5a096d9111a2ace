"""BTCV and AMOS downloads -> nnU-Net raw data sets with the paper's test splits and 5 cross-validation folds;
their shared input checks, split files, download layouts, label tables, and synthetic phantoms."""
