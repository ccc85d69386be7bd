"""Text: the corpus (real English text, one domain per source) and the token set."""
