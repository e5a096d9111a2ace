"""Dice, NSD and IoU per case and organ (summary.json), NSD tolerances, and comparison tables of summaries."""
