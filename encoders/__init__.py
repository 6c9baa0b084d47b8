"""Text encoders (BERT via transformers, hashing), the embedding store, user-state pooling."""
