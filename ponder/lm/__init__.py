"""Causal language models: text corpora, tokenizers and training windows (`ponder.lm.text`)."""
