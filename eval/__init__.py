"""Evaluation of adapted models; `eval.wvs` scores them against World Values Survey answers."""
