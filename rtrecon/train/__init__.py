"""Training MindEye2: data interface, losses, the accelerate trainer, retrieval evaluation, CLI.

- :mod:`rtrecon.train.data`: ``TrainingData`` / ``SubjectData`` (betas per subject, CLIP
  targets, image ids) and ``epoch_batches``.
- :mod:`rtrecon.train.losses`: BiMixCo, SoftCLIP, soft contrastive loss, temperature schedule.
- :mod:`rtrecon.train.trainer`: ``TrainConfig`` and ``train(model, data, config, output_dir)``.
- :mod:`rtrecon.train.evaluate`: ``retrieval_accuracy`` (top-1 among 300, both directions).
- :mod:`rtrecon.train.command`: the ``rtrecon train`` subcommand.
- :mod:`rtrecon.train.compare`: ``rtrecon train-compare``, shared-subject pretraining + fine-tuning
  vs one subject alone, held-out retrieval among 300 (``compare_shared_vs_single``, ``compare_on_data``).
"""
