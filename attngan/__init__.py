"""attngan: the core shared by trainer and service.

Networks, tokenizer and vocabulary, configuration, and the model bundle format.
Nothing here imports `trainer`, `service` or `infra`.
"""

__version__ = "0.1.0"
