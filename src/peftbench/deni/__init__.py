"""DENI — Delayed Ensemble with Noisy Interpolation (Pecher et al., Findings of EMNLP 2024,
arXiv 2406.12471) against fine-tuning instability: the pure core, over plain tensors and dicts.

`schedule` says which optimisation steps train one model, which train the K noisy NI copies and
which train the delayed ensemble, and what happens between steps (spawn copies, average them);
`noise` makes the noisy copies and averages them back into one model; `vote` turns the K members'
predictions into one (majority vote for text, mean for regression, most frequent label for loglik).
"""
