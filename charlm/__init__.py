"""charlm: character-level RNN language models with Lightning and Hydra."""
