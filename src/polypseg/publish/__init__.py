"""Publishing: the model card of a run or weights folder, and pushing both to the Hugging Face Hub."""

from polypseg.publish.card import CARD_NAME, model_card
from polypseg.publish.push import push_to_hub

__all__ = ["CARD_NAME", "model_card", "push_to_hub"]
