"""Evaluation tools: `eval.metrics` (FID / KID / IS, domain FID, class consistency, CLIP score of a folder of
images), `eval.speed` (latency, FLOPs, memory and reducer overhead against the SDPA baseline), `eval.report`
(paper-style tables and plots from any set of runs); shared: `eval.flops`, `eval.full_flops`, `eval.stats`."""
