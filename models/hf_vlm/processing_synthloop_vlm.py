"""Processor of the synthloop embedding VLM (remote code: copied into every export).

``processor(text=..., images=...)``: each ``<image>`` in the text becomes ``num_visual_tokens`` image tokens,
the text is tokenized as synthloop's trainers do (no special tokens added by the tokenizer, the chat template
writes them; BOS put first when the text does not start with it: ``add_bos``), padded on the tokenizer's
``padding_side`` (set it to ``"left"`` for batched generation), and the images
go through the tower's own preprocessing (``CLIPImageProcessor`` with open_clip's resize, crop and
normalisation) into ``pixel_values``. ``apply_chat_template`` is the tokenizer's.
"""

from __future__ import annotations

from transformers import BatchFeature, ProcessorMixin


class SynthloopVLMProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token: str = "<image>",
                 num_visual_tokens: int = 1, add_bos: bool = True, **kwargs) -> None:
        self.image_token, self.num_visual_tokens, self.add_bos = image_token, int(num_visual_tokens), bool(add_bos)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, text=None, images=None, return_tensors: str = "pt", **kwargs) -> BatchFeature:
        if text is None:
            raise ValueError("SynthloopVLMProcessor: give text (with one <image> per image)")
        texts = [text] if isinstance(text, str) else list(text)
        n_placeholders = sum(t.count(self.image_token) for t in texts)
        images_list = [] if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])
        if n_placeholders != len(images_list):
            raise ValueError(f"SynthloopVLMProcessor: {n_placeholders} {self.image_token!r} placeholder(s) in the text "
                             f"but {len(images_list)} image(s)")
        expanded = [t.replace(self.image_token, self.image_token * self.num_visual_tokens) for t in texts]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in expanded]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if self.add_bos and bos is not None:
            ids = [i if i and i[0] == bos else [bos, *i] for i in ids]
        data = dict(self.tokenizer.pad({"input_ids": ids}, padding=kwargs.get("padding", True) or True,
                                       return_tensors=return_tensors))
        if images_list:
            data["pixel_values"] = self.image_processor(images_list, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]
