"""kdistill: vision-language distillation for explainable chest X-ray AI."""
__version__ = "0.1.0"
