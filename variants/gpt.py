"""The baseline: model.py's GPT (GPT-2 architecture) trained as a next-token language model."""
from model import GPT
from variants.registry import register

register("gpt")(GPT)
