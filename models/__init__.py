"""Trained refiners shipped with cloost (this folder is installed as `cloostcodec.models`)."""
