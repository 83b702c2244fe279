"""Experiments over the zoo: benchmarks, pretraining runs, low-rank studies, figures."""
