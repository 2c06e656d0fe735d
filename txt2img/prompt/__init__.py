"""The prompt language: A1111's syntax parsed (`syntax`), encoded into the text encoders'
embeddings (`encode`), and prompt files read line by line (`files`)."""
