"""The names of the extraction strategies (no dependencies: the CLI reads them for --help)."""

__all__ = ["STRATEGIES", "DEFAULT_STRATEGIES", "CHEAP_STRATEGIES"]

STRATEGIES = ("fv_aie", "fv_attnlrp", "fv_gradient", "mean_diff", "pca", "mean_diff_zs",
              "pca_zs")
DEFAULT_STRATEGIES = ("fv_aie", "mean_diff", "pca", "fv_gradient", "mean_diff_zs", "pca_zs")
# built from one contrast pass, without AIE/AttnLRP head scoring
CHEAP_STRATEGIES = ("fv_gradient", "mean_diff", "pca", "mean_diff_zs", "pca_zs")
