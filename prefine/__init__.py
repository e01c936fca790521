"""Prefine: pretrain an encoder without labels, fine-tune on few, beat training from scratch."""
