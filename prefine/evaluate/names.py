"""The names of a run's result rows (metrics/evaluate.json, the study's tables and plot), in a
module without torch or scikit-learn: the study's flow reads and draws results, it trains nothing."""

SCRATCH = "scratch"  # the baseline: the same architecture from random init, the one way it is named
PROBE = "linear_probe"  # the name of a frozen encoder under probe_head's head, in metrics and tables
BASELINES = ("pixels_logreg", "pixels_knn", "pca_logreg", "pca_knn")  # the trivial baselines, in table order
