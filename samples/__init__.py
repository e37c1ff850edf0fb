"""A small sample of held-out digits shipped with cloost (installed as `cloostcodec.samples`)."""
