"""Models: the GPT-2 architecture, its training, loading through TransformerLens, pretrained groups."""
