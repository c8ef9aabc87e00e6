"""The model side: networks (gpt, llama), their folders on disk (folders), training, evaluation,
generation and fine-tuning. Import the modules themselves; this package file imports nothing, so
that reading params (model.config) does not load torch."""
