"""Datasets as federations: loaders, partitions, prompt templates, tokenisation."""
