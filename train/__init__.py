"""The training side of synthloop: shared machinery in :mod:`train.core`, one package per recipe.

* :mod:`train.core` -- the ``synthloop`` LightningCLI, the online DataModule, callbacks, strategies
  (DDP, DeepSpeed ZeRO-2/3, their CPU/gloo versions), pre-emption, resilience, optimizer/schedule;
* :mod:`train.clip` -- contrastive CLIP pre-training on an online stream, zero-shot evaluation;
* :mod:`train.gift` -- GIFT continual CLIP fine-tuning: losses, the per-task module, the MTIL runner;
* :mod:`train.unicorn` -- Unicorn text-only VLM training, VQA evaluation, the toy recipe;
* :mod:`train.visionzero` -- Vision-Zero self-play: engine, policies, Iterative-SPO, evaluation, toy.

``train`` imports ``datagen`` and ``models``; neither imports ``train`` (``tests/test_layering.py``).
"""
