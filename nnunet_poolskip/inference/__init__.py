"""Inference on nnU-Net's predictor: the fold ensemble that averages softmax probabilities, as the paper does."""
