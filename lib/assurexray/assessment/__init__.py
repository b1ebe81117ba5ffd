"""Assessment: how good a trained model is, measured only from the prepared data and its predictions.

``evaluation`` scores val and test and fits the operating point; ``metrics`` holds the metrics with their
bootstrap intervals; ``explain`` computes Grad-CAM and ``localization`` scores it against the lesion masks
(``gallery`` draws the cases); ``compare``, ``headline``, ``results_table`` and ``ablation`` summarise runs
and experiments; ``decision`` words a prediction's two answers.
"""
