"""SAM 2.1 (Meta's ``facebookresearch/sam2``, Apache-2.0), pure PyTorch: the Hiera image encoder with
its FPN neck, SAM 2's prompt encoder and mask decoder, the memory encoder and memory attention, and
the tracking step that carries an object from one frame (slice) to the next. State dicts are the
official ones (``sam2.1_hiera_*.pt``, under ``"model"``)."""
